//! Group rules, as a pure function: who may change what, and what a change does to the
//! group's record and which event records it in the log. The conversation actor calls
//! [`apply`] when it sequences a change; nothing here does I/O, so the rules are tested
//! directly.

use bytes::Bytes;
use rand::Rng;

use crate::accounts::hash_secret;
use crate::protocol::{id_bytes, pb};
use crate::store::{ConversationRecord, GroupState, UserId};

/// A requested change.
#[derive(Debug, Clone)]
pub enum GroupOp {
    /// The creation event (seq 1 of every group).
    Created,
    /// Admins add members.
    Add(Vec<UserId>),
    /// Admins remove a member.
    Remove(UserId),
    /// A member leaves.
    Leave,
    /// Admins make a member admin.
    Promote(UserId),
    /// Admins make an admin a plain member.
    Demote(UserId),
    /// Change the subject.
    Subject(String),
    /// Change the description.
    Description(String),
    /// Restrict sending to admins (or lift it).
    AdminsOnlySend(bool),
    /// Restrict subject/description changes to admins (or lift it).
    AdminsOnlyInfo(bool),
    /// Create (or replace) the invite link.
    CreateInvite,
    /// Revoke the invite link.
    RevokeInvite,
    /// Join through an invite token (its hash).
    JoinByInvite([u8; 32]),
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The conversation is not a group.
    #[error("not a group")]
    NotAGroup,
    /// The actor (or the target) is not a member.
    #[error("{0}")]
    NotAMember(&'static str),
    /// The change needs an admin.
    #[error("only group admins may do this")]
    NotAdmin,
    /// Over the member limit.
    #[error("the group is limited to {0} members")]
    Full(usize),
    /// Unknown or revoked invite.
    #[error("invalid or revoked invite")]
    InvalidInvite,
    /// A bad value.
    #[error("{0}")]
    Invalid(&'static str),
}

/// The outcome of an accepted change.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The record as of the event.
    pub record: ConversationRecord,
    /// The event to append.
    pub event: pb::ConversationEvent,
    /// Users who became members.
    pub joined: Vec<UserId>,
    /// Users who stopped being members (they still receive this event).
    pub removed: Vec<UserId>,
    /// A freshly created invite token, for the admin who asked.
    pub invite_token: Option<String>,
}

/// Longest subject, in characters.
pub const MAX_SUBJECT: usize = 100;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 2048;

fn insert_sorted(list: &mut Vec<UserId>, user: UserId) {
    if let Err(pos) = list.binary_search(&user) {
        list.insert(pos, user);
    }
}

fn remove_sorted(list: &mut Vec<UserId>, user: UserId) {
    if let Ok(pos) = list.binary_search(&user) {
        list.remove(pos);
    }
}

/// Removes a member, recording their stint; hands admin to the longest-standing member if
/// the last admin left a non-empty group, and returns who that is.
fn drop_member(record: &mut ConversationRecord, user: UserId, seq: u64) -> Option<UserId> {
    remove_sorted(&mut record.members, user);
    if let Some(g) = record.group.as_mut() {
        if let Some(pos) = g.joined.iter().position(|(u, _)| *u == user) {
            let (_, joined) = g.joined.remove(pos);
            g.former.push((user, joined, seq));
        }
        remove_sorted(&mut g.admins, user);
        if g.admins.is_empty()
            && let Some((oldest, _)) = g.joined.iter().min_by_key(|(_, s)| *s)
        {
            let oldest = *oldest;
            insert_sorted(&mut g.admins, oldest);
            return Some(oldest);
        }
    }
    None
}

fn member_change(user: UserId, promoted: Option<UserId>) -> pb::MemberChange {
    pb::MemberChange { user_id: id_bytes(user), promoted_user_id: promoted.map(id_bytes).unwrap_or_default() }
}

fn kind(kind: pb::conversation_event::Kind) -> pb::ConversationEvent {
    pb::ConversationEvent { kind: Some(kind) }
}

/// Applies `op` by `actor` as the event at `seq`.
pub fn apply(record: &ConversationRecord, actor: UserId, op: GroupOp, seq: u64, max_members: usize) -> Result<Applied, GroupError> {
    let group = record.group.as_ref().ok_or(GroupError::NotAGroup)?;
    let is_member = record.is_member(actor);
    let is_admin = record.is_admin(actor);
    let admin_only = |ok: bool| {
        if ok {
            Ok(())
        } else if is_member {
            Err(GroupError::NotAdmin)
        } else {
            Err(GroupError::NotAMember("not a member of this group"))
        }
    };
    let mut next = record.clone();
    let g: &mut GroupState = next.group.as_mut().ok_or(GroupError::NotAGroup)?;
    let mut joined = Vec::new();
    let mut removed = Vec::new();
    let mut invite_token = None;
    let event = match op {
        GroupOp::Created => {
            if seq != 1 {
                return Err(GroupError::Invalid("the group already exists"));
            }
            admin_only(is_admin)?;
            kind(pb::conversation_event::Kind::Created(pb::GroupCreated {
                subject: group.subject.clone(),
                member_user_ids: record.members.iter().map(|u| id_bytes(*u)).collect(),
                admin_user_ids: group.admins.iter().map(|u| id_bytes(*u)).collect(),
            }))
        }
        GroupOp::Add(users) => {
            admin_only(is_admin)?;
            // Each user once, in the order first named: a user named twice would otherwise
            // get two join entries, and the one a removal leaves behind would keep the
            // log visible to them after they were removed.
            let mut fresh: Vec<UserId> = Vec::with_capacity(users.len());
            for u in users {
                if !record.is_member(u) && !fresh.contains(&u) {
                    fresh.push(u);
                }
            }
            if fresh.is_empty() {
                return Err(GroupError::Invalid("everyone named is already a member"));
            }
            if record.members.len() + fresh.len() > max_members {
                return Err(GroupError::Full(max_members));
            }
            for u in &fresh {
                insert_sorted(&mut next.members, *u);
                if let Some(g) = next.group.as_mut() {
                    g.joined.push((*u, seq));
                }
            }
            joined = fresh.clone();
            kind(pb::conversation_event::Kind::MembersAdded(pb::UserList { user_ids: fresh.iter().map(|u| id_bytes(*u)).collect() }))
        }
        GroupOp::Remove(user) if user == actor => return apply(record, actor, GroupOp::Leave, seq, max_members),
        GroupOp::Remove(user) => {
            admin_only(is_admin)?;
            if !record.is_member(user) {
                return Err(GroupError::NotAMember("that user is not a member"));
            }
            let promoted = drop_member(&mut next, user, seq);
            removed.push(user);
            kind(pb::conversation_event::Kind::MemberRemoved(member_change(user, promoted)))
        }
        GroupOp::Leave => {
            if !is_member {
                return Err(GroupError::NotAMember("not a member of this group"));
            }
            let promoted = drop_member(&mut next, actor, seq);
            removed.push(actor);
            kind(pb::conversation_event::Kind::MemberLeft(member_change(actor, promoted)))
        }
        GroupOp::Promote(user) => {
            admin_only(is_admin)?;
            if !record.is_member(user) {
                return Err(GroupError::NotAMember("that user is not a member"));
            }
            insert_sorted(&mut g.admins, user);
            kind(pb::conversation_event::Kind::Promoted(id_bytes(user)))
        }
        GroupOp::Demote(user) => {
            admin_only(is_admin)?;
            if !record.is_admin(user) {
                return Err(GroupError::Invalid("that user is not an admin"));
            }
            if group.admins.len() == 1 {
                return Err(GroupError::Invalid("a group keeps at least one admin"));
            }
            remove_sorted(&mut g.admins, user);
            kind(pb::conversation_event::Kind::Demoted(id_bytes(user)))
        }
        GroupOp::Subject(subject) => {
            admin_only(is_admin || (is_member && !group.admins_only_info))?;
            if subject.trim().is_empty() || subject.chars().count() > MAX_SUBJECT {
                return Err(GroupError::Invalid("subject must be 1 to 100 characters"));
            }
            g.subject = subject.clone();
            kind(pb::conversation_event::Kind::SubjectChanged(subject))
        }
        GroupOp::Description(description) => {
            admin_only(is_admin || (is_member && !group.admins_only_info))?;
            if description.chars().count() > MAX_DESCRIPTION {
                return Err(GroupError::Invalid("description must be at most 2048 characters"));
            }
            g.description = description.clone();
            kind(pb::conversation_event::Kind::DescriptionChanged(description))
        }
        GroupOp::AdminsOnlySend(on) => {
            admin_only(is_admin)?;
            g.admins_only_send = on;
            kind(pb::conversation_event::Kind::AdminsOnlySendChanged(on))
        }
        GroupOp::AdminsOnlyInfo(on) => {
            admin_only(is_admin)?;
            g.admins_only_info = on;
            kind(pb::conversation_event::Kind::AdminsOnlyInfoChanged(on))
        }
        GroupOp::CreateInvite => {
            admin_only(is_admin)?;
            let token = hex::encode(rand::rng().random::<[u8; 16]>());
            g.invite_hash = Some(hash_secret(&token));
            invite_token = Some(token);
            kind(pb::conversation_event::Kind::InviteChanged(true))
        }
        GroupOp::RevokeInvite => {
            admin_only(is_admin)?;
            g.invite_hash = None;
            kind(pb::conversation_event::Kind::InviteChanged(false))
        }
        GroupOp::JoinByInvite(hash) => {
            if group.invite_hash != Some(hash) {
                return Err(GroupError::InvalidInvite);
            }
            if is_member {
                return Err(GroupError::Invalid("already a member"));
            }
            if record.members.len() + 1 > max_members {
                return Err(GroupError::Full(max_members));
            }
            insert_sorted(&mut next.members, actor);
            if let Some(g) = next.group.as_mut() {
                g.joined.push((actor, seq));
            }
            joined.push(actor);
            kind(pb::conversation_event::Kind::JoinedByInvite(id_bytes(actor)))
        }
    };
    Ok(Applied { record: next, event, joined, removed, invite_token })
}

/// The encoded event, as stored in the log.
pub fn encode_event(event: &pb::ConversationEvent) -> Bytes {
    use prost::Message as _;
    Bytes::from(event.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConversationId;
    use crate::store::{ConversationKind, GroupState};

    fn group(admin: UserId, members: &[UserId]) -> ConversationRecord {
        let mut all: Vec<UserId> = members.to_vec();
        all.push(admin);
        all.sort();
        ConversationRecord {
            conversation_id: ConversationId::random(),
            kind: ConversationKind::Group,
            members: all.clone(),
            created_ms: 0,
            group: Some(Box::new(GroupState {
                subject: "s".into(),
                admins: vec![admin],
                joined: all.iter().map(|u| (*u, 1)).collect(),
                ..Default::default()
            })),
            retention_secs: 0,
        }
    }

    #[test]
    fn only_admins_change_membership_and_removal_is_recorded() {
        let (admin, bob, carol, dave) = (UserId::random(), UserId::random(), UserId::random(), UserId::random());
        let g = group(admin, &[bob, carol]);
        assert_eq!(apply(&g, bob, GroupOp::Add(vec![dave]), 2, 10).unwrap_err(), GroupError::NotAdmin);
        assert_eq!(apply(&g, dave, GroupOp::Remove(bob), 2, 10).unwrap_err(), GroupError::NotAMember("not a member of this group"));
        let added = apply(&g, admin, GroupOp::Add(vec![dave]), 2, 10).unwrap();
        assert_eq!(added.joined, vec![dave]);
        assert_eq!(added.record.visible_range(dave), Some((2, u64::MAX)));
        let removed = apply(&added.record, admin, GroupOp::Remove(bob), 3, 10).unwrap();
        assert!(!removed.record.is_member(bob));
        assert_eq!(removed.record.visible_range(bob), Some((1, 3)));
        assert_eq!(apply(&g, admin, GroupOp::Add(vec![dave]), 2, 3).unwrap_err(), GroupError::Full(3));
    }

    #[test]
    fn a_user_named_twice_joins_once_and_a_removal_ends_their_view() {
        let (admin, dave) = (UserId::random(), UserId::random());
        let g = group(admin, &[]);
        let added = apply(&g, admin, GroupOp::Add(vec![dave, dave]), 2, 10).unwrap();
        assert_eq!(added.joined, vec![dave]);
        match &added.event.kind {
            Some(pb::conversation_event::Kind::MembersAdded(list)) => assert_eq!(list.user_ids, vec![id_bytes(dave)]),
            other => panic!("expected MembersAdded, got {other:?}"),
        }
        let removed = apply(&added.record, admin, GroupOp::Remove(dave), 3, 10).unwrap();
        assert_eq!(removed.record.visible_range(dave), Some((2, 3)), "nothing after the removal");
        // The size limit counts each user once.
        assert!(apply(&g, admin, GroupOp::Add(vec![dave, dave]), 2, 2).is_ok());
    }

    #[test]
    fn last_admin_leaving_hands_over_and_info_policy_applies() {
        let (admin, bob) = (UserId::random(), UserId::random());
        let g = group(admin, &[bob]);
        let left = apply(&g, admin, GroupOp::Leave, 2, 10).unwrap();
        assert!(left.record.is_admin(bob));
        match left.event.kind {
            Some(pb::conversation_event::Kind::MemberLeft(change)) => assert_eq!(change.promoted_user_id, id_bytes(bob)),
            other => panic!("expected MemberLeft, got {other:?}"),
        }
        let locked = apply(&left.record, bob, GroupOp::AdminsOnlyInfo(true), 3, 10).unwrap().record;
        let carol = UserId::random();
        let with_carol = apply(&locked, bob, GroupOp::Add(vec![carol]), 4, 10).unwrap().record;
        assert_eq!(apply(&with_carol, carol, GroupOp::Subject("x".into()), 5, 10).unwrap_err(), GroupError::NotAdmin);
        assert!(apply(&with_carol, bob, GroupOp::Subject("x".into()), 5, 10).is_ok());
    }

    #[test]
    fn invites_join_once_and_revocation_stops_them() {
        let (admin, eve) = (UserId::random(), UserId::random());
        let g = group(admin, &[]);
        let created = apply(&g, admin, GroupOp::CreateInvite, 2, 10).unwrap();
        let hash = hash_secret(created.invite_token.as_deref().unwrap());
        let joined = apply(&created.record, eve, GroupOp::JoinByInvite(hash), 3, 10).unwrap();
        assert!(joined.record.is_member(eve));
        let revoked = apply(&created.record, admin, GroupOp::RevokeInvite, 3, 10).unwrap().record;
        assert_eq!(apply(&revoked, eve, GroupOp::JoinByInvite(hash), 4, 10).unwrap_err(), GroupError::InvalidInvite);
    }
}
