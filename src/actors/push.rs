//! The push dispatcher: tells devices that have no live connection that a conversation
//! they are in got messages, through a pluggable sink (a webhook in front of FCM/APNs, or
//! the log).
//!
//! Notifications carry no content (conversation id, last sender, count): the server never
//! has plaintext, and a push service should not get ciphertext either. They are coalesced
//! per device and conversation over a short window (one push for a burst, not one per
//! message), and a failed delivery is retried with exponential backoff. Before every
//! attempt, the first and each retry, the member's read receipts are looked at: what the
//! user has read on another device (up to the newest message of the notification) is not
//! pushed any more; a conversation the user muted pushes silently or not at all, as they
//! chose.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;

use super::Router;
use super::mailbox::{ActorStats, Addressed, Label, MailboxGauge};
use crate::cores::inbox::PushMode;
use crate::store::{ConversationId, DeviceId, PushToken, Store, UserId};

/// One notification for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushNotification {
    /// Owner of the device.
    pub user_id: UserId,
    /// The device.
    pub device_id: DeviceId,
    /// Push service of the token.
    pub platform: String,
    /// The device's push token.
    pub token: String,
    /// Where the messages are.
    pub conversation_id: ConversationId,
    /// Who sent the latest of them.
    pub sender_user_id: UserId,
    /// How many messages this notification stands for.
    pub count: u32,
    /// The user muted the conversation and chose silent pushes: update the badge, no
    /// sound or banner. (Muted with pushes off: no notification at all.)
    pub silent: bool,
    /// Seq of the newest of them: once the user has read up to it on any device, the
    /// notification is skipped (0: never skipped). Not sent to the sink.
    #[serde(skip)]
    pub up_to_seq: u64,
}

/// Where notifications go.
#[async_trait::async_trait]
pub trait PushSink: Send + Sync + 'static {
    /// Delivers one notification; an error means "retry later".
    async fn deliver(&self, notification: &PushNotification) -> Result<(), String>;
}

/// Writes notifications to the log (development).
#[derive(Debug, Default)]
pub struct LogSink;

#[async_trait::async_trait]
impl PushSink for LogSink {
    async fn deliver(&self, n: &PushNotification) -> Result<(), String> {
        tracing::info!(device = %n.device_id, conversation = %n.conversation_id, count = n.count, "push notification (log sink)");
        Ok(())
    }
}

/// POSTs each notification as JSON to a URL (the gateway to FCM/APNs sits behind it).
#[derive(Debug)]
pub struct WebhookSink {
    url: String,
    http: reqwest::Client,
}

impl WebhookSink {
    /// A sink posting to `url`.
    pub fn new(url: String) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self { url, http }
    }
}

#[async_trait::async_trait]
impl PushSink for WebhookSink {
    async fn deliver(&self, n: &PushNotification) -> Result<(), String> {
        let response = self.http.post(&self.url).json(n).send().await.map_err(|e| e.to_string())?;
        if response.status().is_success() { Ok(()) } else { Err(format!("webhook answered {}", response.status())) }
    }
}

/// Timing of the dispatcher.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Messages within this window become one notification per device and conversation.
    pub coalesce: Duration,
    /// Attempts per notification before it is dropped.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt.
    pub backoff: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self { coalesce: Duration::from_millis(500), max_attempts: 6, backoff: Duration::from_millis(500) }
    }
}

/// Messages of the dispatcher.
pub enum PushMsg {
    /// Counted by the dispatcher's mailbox.
    Request(PushRequest),
    /// The dispatcher's own follow-ups.
    Internal(PushInternal),
}

/// What conversations and the API ask of the dispatcher.
pub enum PushRequest {
    /// Messages were stored: notify the members' offline devices.
    Stored {
        /// Conversation.
        conversation_id: ConversationId,
        /// Sender of the latest (not notified).
        sender: UserId,
        /// Members when they were sequenced.
        members: Arc<Vec<UserId>>,
        /// How many messages.
        count: u32,
        /// Seq of the newest of them.
        up_to_seq: u64,
    },
    /// Notify one device (the end of its session left messages it never acknowledged; see
    /// `session_end`). Coalesced with what is pending for the same device and
    /// conversation, and skipped if the device is connected again when it is due.
    Notify(Box<PushNotification>),
    /// A user's push tokens changed: forget the cached ones.
    TokensChanged(UserId),
}

/// The dispatcher's own follow-ups.
pub enum PushInternal {
    /// Send what is due.
    Flush,
    /// A delivery finished.
    Delivered(Box<PushNotification>, u32, Result<(), String>),
}

impl Addressed for PushMsg {
    type Request = PushRequest;

    fn request(request: PushRequest) -> Self {
        PushMsg::Request(request)
    }

    fn into_request(self) -> Option<PushRequest> {
        match self {
            PushMsg::Request(r) => Some(r),
            PushMsg::Internal(_) => None,
        }
    }

    fn is_request(&self) -> bool {
        matches!(self, PushMsg::Request(_))
    }
}

/// The dispatcher actor.
pub struct PushDispatcher;

/// Arguments.
pub struct PushArgs {
    /// Token lookups.
    pub store: Arc<dyn Store>,
    /// Online check.
    pub router: Router,
    /// Where notifications go.
    pub sink: Arc<dyn PushSink>,
    /// Timing.
    pub config: PushConfig,
    /// Where the mailbox gauge is registered.
    pub stats: Arc<ActorStats>,
}

/// Messages the dispatcher's mailbox may hold; beyond it notifications are shed (counted).
pub const PUSH_MAILBOX: usize = 100_000;

struct Due {
    notification: PushNotification,
    attempt: u32,
    at: Instant,
}

/// State: token cache, coalescing buffer, retries.
pub struct PushState {
    args: PushArgs,
    gauge: Arc<MailboxGauge>,
    tokens: HashMap<UserId, Arc<Vec<(DeviceId, PushToken)>>>,
    /// (device, conversation) → notification being coalesced.
    pending: HashMap<(DeviceId, ConversationId), Due>,
    retries: Vec<Due>,
}

/// Bound of the token cache (users); cleared when exceeded.
const TOKEN_CACHE: usize = 100_000;
/// Bound of coalesced notifications waiting to be sent.
const MAX_PENDING: usize = 200_000;

impl Actor for PushDispatcher {
    type Msg = PushMsg;
    type State = PushState;
    type Arguments = PushArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: PushArgs) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.config.coalesce, || PushMsg::Internal(PushInternal::Flush));
        let gauge = args.stats.register(myself.get_id(), Label::Named("push-dispatcher"), PUSH_MAILBOX);
        Ok(PushState { args, gauge, tokens: HashMap::new(), pending: HashMap::new(), retries: Vec::new() })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.gauge.received(&msg);
        let started = Instant::now();
        match msg {
            PushMsg::Request(PushRequest::Stored { conversation_id, sender, members, count, up_to_seq }) => {
                for member in members.iter().filter(|m| **m != sender) {
                    let tokens = match tokens_of(state, *member).await {
                        Some(t) => t,
                        None => continue,
                    };
                    for (device, token) in tokens.iter() {
                        if state.args.router.is_device_online(*member, *device) {
                            continue;
                        }
                        if state.pending.len() >= MAX_PENDING {
                            metrics::counter!("switchboard_push_dropped_total").increment(1);
                            continue;
                        }
                        let at = Instant::now() + state.args.config.coalesce;
                        let due = state.pending.entry((*device, conversation_id)).or_insert_with(|| Due {
                            notification: PushNotification {
                                user_id: *member,
                                device_id: *device,
                                platform: token.platform.clone(),
                                token: token.token.clone(),
                                conversation_id,
                                sender_user_id: sender,
                                count: 0,
                                silent: false,
                                up_to_seq: 0,
                            },
                            attempt: 0,
                            at,
                        });
                        due.notification.count += count;
                        due.notification.sender_user_id = sender;
                        due.notification.up_to_seq = due.notification.up_to_seq.max(up_to_seq);
                    }
                }
            }
            PushMsg::Request(PushRequest::Notify(notification)) => {
                let key = (notification.device_id, notification.conversation_id);
                let full = state.pending.len() >= MAX_PENDING;
                match state.pending.entry(key) {
                    // The same messages may already be counted by a pending notification.
                    Entry::Occupied(mut due) => {
                        let due = &mut due.get_mut().notification;
                        due.count = due.count.max(notification.count);
                        due.up_to_seq = due.up_to_seq.max(notification.up_to_seq);
                    }
                    Entry::Vacant(_) if full => metrics::counter!("switchboard_push_dropped_total").increment(1),
                    Entry::Vacant(slot) => {
                        slot.insert(Due { notification: *notification, attempt: 0, at: Instant::now() + state.args.config.coalesce });
                    }
                }
            }
            PushMsg::Request(PushRequest::TokensChanged(user)) => {
                state.tokens.remove(&user);
            }
            PushMsg::Internal(PushInternal::Flush) => flush(&myself, state),
            PushMsg::Internal(PushInternal::Delivered(notification, attempt, result)) => match result {
                Ok(()) => metrics::counter!("switchboard_push_sent_total").increment(1),
                Err(e) if attempt + 1 < state.args.config.max_attempts => {
                    let delay = state.args.config.backoff * 2u32.saturating_pow(attempt);
                    tracing::debug!(device = %notification.device_id, attempt, error = %e, "push failed; retrying");
                    metrics::counter!("switchboard_push_retries_total").increment(1);
                    state.retries.push(Due { notification: *notification, attempt: attempt + 1, at: Instant::now() + delay });
                }
                Err(e) => {
                    tracing::warn!(device = %notification.device_id, error = %e, "push dropped after retries");
                    metrics::counter!("switchboard_push_dropped_total").increment(1);
                }
            },
        }
        state.gauge.add_busy(started);
        Ok(())
    }
}

async fn tokens_of(state: &mut PushState, user: UserId) -> Option<Arc<Vec<(DeviceId, PushToken)>>> {
    if let Some(t) = state.tokens.get(&user) {
        return (!t.is_empty()).then(|| t.clone());
    }
    match state.args.store.push_tokens_of(user).await {
        Ok(list) => {
            if state.tokens.len() >= TOKEN_CACHE {
                state.tokens.clear();
            }
            let list = Arc::new(list);
            state.tokens.insert(user, list.clone());
            (!list.is_empty()).then_some(list)
        }
        Err(e) => {
            tracing::warn!(error = %e, "push token lookup failed");
            None
        }
    }
}

fn flush(myself: &ActorRef<PushMsg>, state: &mut PushState) {
    let now = Instant::now();
    let due_keys: Vec<_> = state.pending.iter().filter(|(_, d)| d.at <= now).map(|(k, _)| *k).collect();
    let mut due: Vec<Due> = due_keys.into_iter().filter_map(|k| state.pending.remove(&k)).collect();
    let (ready, later): (Vec<Due>, Vec<Due>) = std::mem::take(&mut state.retries).into_iter().partition(|d| d.at <= now);
    state.retries = later;
    due.extend(ready);
    for d in due {
        // A device that came back online in the meantime gets its messages live instead.
        if state.args.router.is_device_online(d.notification.user_id, d.notification.device_id) {
            continue;
        }
        let sink = state.args.sink.clone();
        let store = state.args.store.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            if already_read(store.as_ref(), &d.notification).await {
                metrics::counter!("switchboard_push_skipped_total", "reason" => "read").increment(1);
                return;
            }
            let mut notification = d.notification;
            match push_mode(store.as_ref(), &notification).await {
                PushMode::Alert => {}
                PushMode::Silent => notification.silent = true,
                PushMode::Skip => {
                    metrics::counter!("switchboard_push_skipped_total", "reason" => "muted").increment(1);
                    return;
                }
            }
            let result = sink.deliver(&notification).await;
            let _ = me.cast(PushMsg::Internal(PushInternal::Delivered(Box::new(notification), d.attempt, result)));
        });
    }
}

/// How the user wants this conversation pushed now (muted: silent or not at all). A store
/// that cannot answer does not stop the push: better one too many than a message missed.
async fn push_mode(store: &dyn Store, n: &PushNotification) -> PushMode {
    match store.chat_state(n.user_id, n.conversation_id).await {
        Ok(state) => crate::cores::inbox::push_mode(&state, crate::store::now_ms()),
        Err(_) => PushMode::Alert,
    }
}

/// True if the user has read the notification's newest message on some device (the
/// member's read receipt reached its seq). A store that cannot answer does not stop the
/// push: better one too many than a message missed.
async fn already_read(store: &dyn Store, n: &PushNotification) -> bool {
    if n.up_to_seq == 0 {
        return false;
    }
    matches!(store.receipt_times(n.conversation_id, n.user_id, n.up_to_seq).await, Ok((_, Some(_))))
}

// Local only: never sent to another node (the cluster feature asks every message type to say so).
impl ractor::Message for PushMsg {}
