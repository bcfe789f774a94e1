//! The key directory through real sockets (frames over TCP and WebSocket, and the HTTP
//! mirrors): uploads with vodozemac-made keys and signatures, who may see whose devices,
//! 100 concurrent claims that never hand a key out twice, the fallback key, the low-keys
//! notice, refusals, and revocation removing a device's keys.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Kind, TestServer, WAIT, caught_up, online, rejected, signed_upload, user};
use switchboard::client::{ClientError, Connection};
use switchboard::cores::keys::{identity_signed_bytes, one_time_key_signed_bytes, verify};
use switchboard::ids::DeviceId;
use switchboard::protocol::{ErrorCode, parse_id, pb, server_frame};
use vodozemac::olm::Account;

both_transports!(members_see_each_others_devices_and_strangers_do_not);

async fn members_see_each_others_devices_and_strangers_do_not(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, kind, &alice).await;
    let mut b = online(&server, kind, &bob).await;
    let mut c = online(&server, kind, &carol).await;

    let mut account = Account::new();
    let upload = signed_upload(&mut account, alice.user_id, alice.device_id, 5, true);
    assert_eq!(a.upload_keys(upload.clone()).await.unwrap().one_time_key_count, 5);
    // The same upload again (a retry) changes nothing.
    assert_eq!(a.upload_keys(upload.clone()).await.unwrap().one_time_key_count, 5);

    // Before they share a conversation, Bob may not look Alice up.
    assert_eq!(rejected(b.query_devices(&[alice.user_id]).await), ErrorCode::NoSharedConversation);
    a.open_direct(bob.user_id).await.unwrap();
    let list = b.query_devices(&[alice.user_id]).await.unwrap();
    assert_eq!(list.users.len(), 1);
    let devices = &list.users[0].devices;
    assert_eq!(devices.len(), 1, "only the device that published keys is listed");
    assert_eq!(parse_id::<DeviceId>("device_id", &devices[0].device_id).unwrap(), alice.device_id);
    let identity = devices[0].identity.clone().unwrap();
    assert_eq!(Some(identity.clone()), upload.identity);
    let (curve, ed): ([u8; 32], [u8; 32]) = (identity.curve25519[..].try_into().unwrap(), identity.ed25519[..].try_into().unwrap());
    assert!(verify(&ed, &identity_signed_bytes(alice.user_id, alice.device_id, &curve, &ed), &identity.signature));
    assert_eq!(ed, *account.ed25519_key().as_bytes());
    // Carol shares nothing with Alice; Alice may always see her own devices.
    assert_eq!(rejected(c.query_devices(&[alice.user_id]).await), ErrorCode::NoSharedConversation);
    assert_eq!(a.query_devices(&[alice.user_id]).await.unwrap().users[0].devices.len(), 1);
    assert_eq!(rejected(c.claim_keys(&[(alice.user_id, alice.device_id)]).await), ErrorCode::NoSharedConversation);

    // The HTTP mirror answers the same.
    let http = reqwest::Client::new();
    let answer: serde_json::Value = http
        .post(format!("http://{}/v1/keys/query", server.http))
        .bearer_auth(&bob.token)
        .json(&serde_json::json!({ "user_ids": [alice.user_id.to_string()] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer[0]["devices"][0]["identity"]["ed25519"], account.ed25519_key().to_base64());
    assert_eq!(answer[0]["devices"][0]["identity"]["curve25519"], account.curve25519_key().to_base64());
    let refused = http
        .post(format!("http://{}/v1/keys/query", server.http))
        .bearer_auth(&carol.token)
        .json(&serde_json::json!({ "user_ids": [alice.user_id.to_string()] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(refused.json::<serde_json::Value>().await.unwrap()["error"], "no_shared_conversation");
}

/// 100 claims at once (50 over HTTP, 50 as frames on five connections): no key twice,
/// Alice's device told live that it runs low, then the fallback key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_hand_a_key_out_twice() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.unwrap();
    let mut account = Account::new();
    let upload = signed_upload(&mut account, alice.user_id, alice.device_id, 100, true);
    // vodozemac numbers fallback keys apart from one-time keys: compare the key itself.
    let fallback_key = upload.fallback_key.clone().unwrap();
    assert_eq!(a.upload_keys(upload).await.unwrap().one_time_key_count, 100);
    // Five more, in a second upload signed against the published identity keys.
    let more = signed_upload(&mut account, alice.user_id, alice.device_id, 5, false);
    let more = pb::UploadKeys { identity: None, ..more };
    assert_eq!(a.upload_keys(more).await.unwrap().one_time_key_count, 105);

    let target = (alice.user_id, alice.device_id);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (url, token) = (format!("http://{}/v1/keys/claim", server.http), bob.token.clone());
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({ "devices": [{ "user_id": target.0.to_string(), "device_id": target.1.to_string() }] });
            let answer: serde_json::Value =
                reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await.unwrap().json().await.unwrap();
            let key = &answer["keys"][0];
            vec![(key["key"]["key_id"].as_str().expect("a key").to_owned(), key["fallback"].as_bool().unwrap())]
        }));
    }
    // Five devices of Bob's (one connection per device: a device that connects again
    // replaces its earlier connection).
    let mut bob_tokens = vec![bob.token.clone()];
    for i in 0..4 {
        bob_tokens.push(api.link_device(&bob.token, &format!("bob {i}")).await.unwrap().token);
    }
    for token in bob_tokens {
        let transport = server.transport(Kind::Tcp);
        tasks.push(tokio::spawn(async move {
            let (mut conn, _) = Connection::open(&transport, &token).await.unwrap();
            caught_up(&mut conn).await;
            for i in 0..10u64 {
                let devices = vec![pb::DeviceAddress {
                    user_id: target.0.uuid().as_bytes().to_vec().into(),
                    device_id: target.1.uuid().as_bytes().to_vec().into(),
                }];
                conn.send(switchboard::protocol::client_frame::Kind::ClaimKeys(pb::ClaimKeys { request_id: i + 1, devices })).await.unwrap();
            }
            let mut got = Vec::new();
            while got.len() < 10 {
                if let server_frame::Kind::ClaimedKeys(k) = conn.recv_timeout(WAIT).await.unwrap() {
                    let key = &k.keys[0];
                    got.push((key.key.as_ref().unwrap().key_id.clone(), key.fallback));
                }
            }
            got
        }));
    }
    let mut handed = BTreeSet::new();
    for task in tasks {
        for (key_id, fallback) in task.await.unwrap() {
            assert!(!fallback, "fallback handed out while one-time keys were left");
            assert!(handed.insert(key_id.clone()), "{key_id} handed out twice");
        }
    }
    assert_eq!(handed.len(), 100);

    // Five left: below the low-water mark, and Alice's device was told so, live.
    let low = a
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::KeysLow(l) => Some(*l),
            _ => None,
        })
        .await
        .unwrap();
    assert!(low.one_time_key_count < u64::from(low.low_water), "{low:?}");

    let mut b = online(&server, Kind::Tcp, &bob).await;
    for _ in 0..5 {
        let claimed = b.claim_keys(&[target]).await.unwrap();
        let key = claimed.keys[0].key.clone().unwrap();
        assert!(!claimed.keys[0].fallback && handed.insert(key.key_id.clone()));
        // Each claimed key verifies against the identity key Bob looked up.
        let key_bytes: [u8; 32] = key.key[..].try_into().unwrap();
        assert!(verify(
            account.ed25519_key().as_bytes(),
            &one_time_key_signed_bytes(alice.device_id, &key.key_id, &key_bytes, false),
            &key.signature
        ));
    }
    let claimed = b.claim_keys(&[target]).await.unwrap();
    assert!(claimed.keys[0].fallback);
    assert_eq!(claimed.keys[0].key.as_ref(), Some(&fallback_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_unknown_devices_get_clear_answers() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Ws, &alice).await;
    let mut account = Account::new();

    // A flipped bit in one key's signature.
    let mut tampered = signed_upload(&mut account, alice.user_id, alice.device_id, 3, false);
    let mut sig = tampered.one_time_keys[1].signature.to_vec();
    sig[0] ^= 1;
    tampered.one_time_keys[1].signature = sig.into();
    assert_eq!(rejected(a.upload_keys(tampered).await), ErrorCode::InvalidSignature);
    // Keys signed for Bob's device, uploaded by Alice's.
    let mut other = Account::new();
    assert_eq!(rejected(a.upload_keys(signed_upload(&mut other, bob.user_id, bob.device_id, 1, false)).await), ErrorCode::InvalidSignature);
    // Too many keys in one upload.
    assert_eq!(rejected(a.upload_keys(signed_upload(&mut account, alice.user_id, alice.device_id, 101, false)).await), ErrorCode::TooManyKeys);
    // One-time keys before any identity keys.
    let orphan = pb::UploadKeys { identity: None, ..signed_upload(&mut account, alice.user_id, alice.device_id, 1, false) };
    assert_eq!(rejected(a.upload_keys(orphan).await), ErrorCode::InvalidArgument);
    // Nothing of the refused uploads was stored.
    assert_eq!(a.query_devices(&[alice.user_id]).await.unwrap().users[0].devices.len(), 0);

    // Over HTTP: the same refusal, as JSON.
    let http = reqwest::Client::new();
    let keys: Vec<serde_json::Value> =
        (0..101).map(|i| serde_json::json!({ "key_id": format!("k{i}"), "key": "AAAA", "signature": "AAAA" })).collect();
    let refused = http
        .post(format!("http://{}/v1/keys/upload", server.http))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({ "one_time_keys": keys }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(refused.json::<serde_json::Value>().await.unwrap()["error"], "too_many_keys");

    // A claim for a device that does not exist (of a user Alice may see: herself).
    let ghost = DeviceId::random();
    let claimed = a.claim_keys(&[(alice.user_id, ghost)]).await.unwrap();
    assert!(claimed.keys.is_empty());
    assert_eq!(parse_id::<DeviceId>("device_id", &claimed.unavailable[0].device_id).unwrap(), ghost);
    // A malformed id.
    let bad = pb::ClaimKeys { request_id: 7, devices: vec![pb::DeviceAddress { user_id: vec![1, 2].into(), device_id: vec![].into() }] };
    a.send(switchboard::protocol::client_frame::Kind::ClaimKeys(bad)).await.unwrap();
    assert_eq!(common::next_error(&mut a).await.code(), ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_removes_its_keys_and_a_low_device_hears_at_connect() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let laptop = api.link_device(&alice.token, "laptop").await.unwrap();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.unwrap();
    let mut l = online(&server, Kind::Tcp, &laptop).await;
    let mut phone_account = Account::new();
    let mut laptop_account = Account::new();
    a.upload_keys(signed_upload(&mut phone_account, alice.user_id, alice.device_id, 20, true)).await.unwrap();
    l.upload_keys(signed_upload(&mut laptop_account, alice.user_id, laptop.device_id, 20, true)).await.unwrap();
    let mut b = online(&server, Kind::Tcp, &bob).await;
    assert_eq!(b.query_devices(&[alice.user_id]).await.unwrap().users[0].devices.len(), 2);

    api.revoke(&alice.token, laptop.device_id).await.unwrap();
    let devices = b.query_devices(&[alice.user_id]).await.unwrap().users[0].devices.clone();
    assert_eq!(devices.len(), 1);
    assert_eq!(parse_id::<DeviceId>("device_id", &devices[0].device_id).unwrap(), alice.device_id);
    let claimed = b.claim_keys(&[(alice.user_id, laptop.device_id), (alice.user_id, alice.device_id)]).await.unwrap();
    assert_eq!(claimed.keys.len(), 1);
    assert_eq!(parse_id::<DeviceId>("device_id", &claimed.unavailable[0].device_id).unwrap(), laptop.device_id);

    // A device with published identity keys and too few one-time keys hears it after
    // catch-up; one that never published keys hears nothing.
    let tablet = api.link_device(&alice.token, "tablet").await.unwrap();
    let mut t = online(&server, Kind::Tcp, &tablet).await;
    let mut tablet_account = Account::new();
    t.upload_keys(signed_upload(&mut tablet_account, alice.user_id, tablet.device_id, 2, false)).await.unwrap();
    t.bye().await.unwrap();
    let (mut t, _) = Connection::open(&server.transport(Kind::Tcp), &tablet.token).await.unwrap();
    caught_up(&mut t).await;
    let low = t
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::KeysLow(l) => Some(*l),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(low.one_time_key_count, 2);
    let (mut quiet, _) = Connection::open(&server.transport(Kind::Tcp), &bob.token).await.unwrap();
    caught_up(&mut quiet).await;
    match quiet.recv_timeout(Duration::from_millis(300)).await {
        Err(ClientError::Timeout) => {}
        Ok(server_frame::Kind::KeysLow(l)) => panic!("a device without keys was told {l:?}"),
        Ok(_) => {}
        Err(e) => panic!("{e}"),
    }
}
