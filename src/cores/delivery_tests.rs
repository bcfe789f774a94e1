//! Tests of the delivery core: the watermark rules by example, and a property test in
//! which catch-up pages and live messages (late, duplicated, with gaps) interleave at
//! random while the device must see every message it may see, in order, once.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::store::{ContentKind, ConversationKind, GroupState};

fn direct(a: UserId, b: UserId) -> ConversationRecord {
    ConversationRecord::direct(a, b, 1)
}

fn message(id: ConversationId, seq: u64, sender: (UserId, DeviceId), event: bool) -> StoredMessage {
    StoredMessage {
        conversation_id: id,
        seq,
        sender_user_id: sender.0,
        sender_device_id: sender.1,
        client_msg_id: format!("c{seq}"),
        server_time_ms: seq,
        payload: Bytes::new(),
        event: event.then(|| Bytes::from_static(b"e")),
        kind: ContentKind::Normal,
        reference_seq: 0,
        deleted: false,
        attachments: Vec::new(),
    }
}

#[test]
fn live_messages_follow_the_watermark() {
    let (me, peer) = (UserId::random(), UserId::random());
    let (my_device, peer_device) = (DeviceId::random(), DeviceId::random());
    let record = direct(me, peer);
    let id = record.conversation_id;
    let mut core = DeliveryCore::new(me, my_device);
    assert_eq!(core.live(id, 1, peer_device, false), Verdict::Unknown);
    assert!(core.add_view(Arc::new(record), Cursor { delivered: 3, read: 2 }));
    assert_eq!(core.live(id, 3, peer_device, false), Verdict::Skip, "covered by the cursor");
    assert_eq!(core.live(id, 4, peer_device, false), Verdict::Push);
    core.pushed(id, 4);
    assert_eq!(core.live(id, 5, my_device, false), Verdict::Own);
    assert_eq!(core.live(id, 5, my_device, true), Verdict::Push, "events go to every device");
    assert_eq!(core.live(id, 8, peer_device, false), Verdict::Gap { after: 4, up_to: 7 });
}

#[test]
fn catch_up_can_start_at_the_newest_messages() {
    let (me, peer) = (UserId::random(), UserId::random());
    let peer_device = DeviceId::random();
    let record = direct(me, peer);
    let id = record.conversation_id;
    let mut core = DeliveryCore::new(me, DeviceId::random());
    core.add_view(Arc::new(record), Cursor::default());
    core.start_after(id, 7);
    let stored: Vec<StoredMessage> = (1..=10).map(|s| message(id, s, (peer, peer_device), false)).collect();
    let page = core.page(id, &stored, u64::MAX, 256, 0);
    assert_eq!(page.send.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![8, 9, 10], "only what follows the start");
    assert!(page.done);
    // Never back: a later, lower start changes nothing.
    core.start_after(id, 2);
    assert_eq!(core.view(id).map(|v| v.pushed), Some(10));
    // The device may acknowledge everything up to where it was sent.
    assert_eq!(core.cursor(id, 10, true), Some(CursorAdvance { delivered: 10, read: 10 }));
}

#[test]
fn cursors_only_grow_and_never_pass_what_was_sent() {
    let (me, peer) = (UserId::random(), UserId::random());
    let record = direct(me, peer);
    let id = record.conversation_id;
    let mut core = DeliveryCore::new(me, DeviceId::random());
    core.add_view(Arc::new(record), Cursor::default());
    core.pushed(id, 1);
    core.pushed(id, 2);
    assert_eq!(core.cursor(id, 10, false), Some(CursorAdvance { delivered: 2, read: 0 }));
    assert_eq!(core.cursor(id, 1, false), None);
    assert_eq!(core.cursor(id, 2, true), Some(CursorAdvance { delivered: 2, read: 2 }));
    assert_eq!(core.cursor(id, 2, true), None);
}

#[test]
fn a_removed_member_sees_up_to_the_event_that_removed_them() {
    let (admin, me) = (UserId::random(), UserId::random());
    let mut record = direct(admin, me);
    record.kind = ConversationKind::Group;
    record.group = Some(Box::new(GroupState { subject: "g".into(), admins: vec![admin], joined: vec![(admin, 1), (me, 3)], ..Default::default() }));
    let id = record.conversation_id;
    let mut core = DeliveryCore::new(me, DeviceId::random());
    core.add_view(Arc::new(record.clone()), Cursor::default());
    let stored: Vec<StoredMessage> = (1..=6).map(|s| message(id, s, (admin, DeviceId::random()), s == 3 || s == 5)).collect();
    let page = core.page(id, &stored, u64::MAX, 100, 0);
    assert_eq!(page.send.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4, 5, 6], "nothing before joining");
    // Removed at 5.
    let mut after = record;
    after.members.retain(|m| *m != me);
    if let Some(g) = after.group.as_mut() {
        g.joined.retain(|(u, _)| *u != me);
        g.former.push((me, 3, 5));
    }
    core.record_changed(Arc::new(after), 5);
    assert_eq!(core.live(id, 7, DeviceId::random(), false), Verdict::Skip);
}

#[test]
fn backpressure_gives_a_full_outbox_its_grace_then_disconnects() {
    let mut b = Backpressure::new(5_000);
    assert_eq!(b.full(1_000), Pressure::Wait(5_000));
    assert_eq!(b.full(3_000), Pressure::Wait(3_000));
    b.drained();
    assert_eq!(b.full(9_000), Pressure::Wait(5_000), "a drained outbox starts over");
    assert_eq!(b.full(14_000), Pressure::Disconnect);
}

#[derive(Debug, Clone)]
enum Event {
    /// The conversation's next stored message arrives live (maybe late: `skip` later
    /// ones first, as when deliveries of other nodes or a restarted activation race).
    Live { lag: u8, dup: bool },
    /// One catch-up page of `size` from the watermark.
    Page { size: u8 },
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the interleaving of catch-up pages and live messages (late, duplicated,
    /// overtaking), the device is sent every message it may see (not its own, events
    /// included) exactly once, in seq order.
    #[test]
    fn every_visible_message_once_and_in_order(
        senders in proptest::collection::vec(0u8..3, 1..60),
        events in proptest::collection::vec(any::<bool>(), 60),
        cursor in 0u64..10,
        schedule in proptest::collection::vec(prop_oneof![
            3 => (0u8..4, any::<bool>()).prop_map(|(lag, dup)| Event::Live { lag, dup }),
            1 => (1u8..8).prop_map(|size| Event::Page { size }),
        ], 1..200),
    ) {
        let (me, peer) = (UserId::random(), UserId::random());
        let (my_device, other_device, peer_device) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
        let record = direct(me, peer);
        let id = record.conversation_id;
        let log: Vec<StoredMessage> = senders
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let sender = match s { 0 => (me, my_device), 1 => (me, other_device), _ => (peer, peer_device) };
                message(id, i as u64 + 1, sender, events[i])
            })
            .collect();
        let cursor = cursor.min(log.len() as u64);
        let mut core = DeliveryCore::new(me, my_device);
        core.add_view(Arc::new(record), Cursor { delivered: cursor, read: 0 });
        let mut sent: Vec<u64> = Vec::new();
        let mut next_live = 0usize;
        let page_from_store = |core: &mut DeliveryCore, after: u64, up_to: u64, size: usize, sent: &mut Vec<u64>| {
            let batch: Vec<StoredMessage> = log.iter().filter(|m| m.seq > after).take(size).cloned().collect();
            let page = core.page(id, &batch, up_to, size, 0);
            sent.extend(page.send.iter().map(|m| m.seq));
            page.done
        };
        for e in schedule {
            match e {
                Event::Page { size } => {
                    let after = core.view(id).map(|v| v.pushed).unwrap_or(0);
                    page_from_store(&mut core, after, u64::MAX, size as usize, &mut sent);
                }
                Event::Live { lag, dup } => {
                    let Some(m) = log.get((next_live + lag as usize).min(log.len().saturating_sub(1))) else { continue };
                    if !dup {
                        next_live += 1;
                    }
                    loop {
                        match core.live(id, m.seq, m.sender_device_id, m.event.is_some()) {
                            Verdict::Push => { sent.push(m.seq); core.pushed(id, m.seq); break; }
                            Verdict::Own => { core.pushed(id, m.seq); break; }
                            Verdict::Skip => break,
                            Verdict::Gap { after, up_to } => {
                                let size = ((up_to - after) as usize).min(4);
                                page_from_store(&mut core, after, up_to, size, &mut sent);
                            }
                            Verdict::Unknown => prop_assert!(false, "the view exists"),
                        }
                    }
                }
            }
        }
        // Catch up to the end.
        loop {
            let after = core.view(id).map(|v| v.pushed).unwrap_or(0);
            if page_from_store(&mut core, after, u64::MAX, 5, &mut sent) && core.view(id).map(|v| v.pushed) == Some(after) {
                break;
            }
            if core.view(id).map(|v| v.pushed) == Some(log.len() as u64) {
                break;
            }
        }
        let expected: Vec<u64> = log
            .iter()
            .filter(|m| m.seq > cursor && (m.sender_device_id != my_device || m.event.is_some()))
            .map(|m| m.seq)
            .collect();
        prop_assert_eq!(sent, expected);
    }
}
