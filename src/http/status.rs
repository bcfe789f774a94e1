//! HTTP for Status ([`crate::status`]): post a status, the feed of the statuses the caller
//! may see, the caller's own with their viewers, marking one seen, deleting one's own.
//! Payloads are the client's ciphertext in hex, as history's `payload_hex`.
//! docs/protocol.md §12, "Status".

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{ApiError, ApiState, ErrorBody, caller};
use crate::cores::status::{FeedCursor, MAX_AUDIENCE_USERS, StatusAudience};
use crate::ids::{StatusId, UserId};
use crate::status::{OwnPost, OwnPosts};
use crate::store::{StatusPost, StatusView};

/// Who may see a post: every contact, only the users listed, or every contact but them.
/// Contacts are mutual for status: a viewer must have the poster's number and be in the
/// poster's contacts; a block either way hides everything. Unknown fields are refused (its
/// schema is written out below: the derived one would not say so of an enum's variants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AudienceJson {
    /// Every contact (WhatsApp's "My contacts"). A struct variant, so that an unknown
    /// field is refused here too (serde lets a unit variant ignore them).
    Contacts {},
    /// Only these users who are contacts ("Only share with…"): 1 to 512 user ids
    /// (repeats and the poster's own id are dropped).
    Allow {
        /// The users.
        users: Vec<UserId>,
    },
    /// Every contact but these ("My contacts except…"): at most 512 user ids.
    Deny {
        /// The users.
        users: Vec<UserId>,
    },
}

impl utoipa::PartialSchema for AudienceJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        let users = |min_items: Option<usize>| {
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))))
                .min_items(min_items)
                .max_items(Some(MAX_AUDIENCE_USERS))
        };
        let variant = |kind: &str, description: &str, users: Option<ArrayBuilder>| {
            let object = ObjectBuilder::new()
                .description(Some(description))
                .property("kind", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([kind])))
                .required("kind")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)));
            match users {
                Some(users) => object.property("users", users).required("users"),
                None => object,
            }
        };
        OneOfBuilder::new()
            .description(Some("Who may see a post, within the poster's (mutual) contacts."))
            .item(variant("contacts", "Every contact.", None))
            .item(variant("allow", "Only these users (who must be contacts): 1 to 512 ids.", Some(users(Some(1)))))
            .item(variant("deny", "Every contact but these: at most 512 ids.", Some(users(None))))
            .into()
    }
}

impl ToSchema for AudienceJson {}

impl Default for AudienceJson {
    fn default() -> Self {
        AudienceJson::Contacts {}
    }
}

impl From<AudienceJson> for StatusAudience {
    fn from(a: AudienceJson) -> Self {
        match a {
            AudienceJson::Contacts {} => StatusAudience::Contacts,
            AudienceJson::Allow { users } => StatusAudience::Allow(users),
            AudienceJson::Deny { users } => StatusAudience::Deny(users),
        }
    }
}

impl From<StatusAudience> for AudienceJson {
    fn from(a: StatusAudience) -> Self {
        match a {
            StatusAudience::Contacts => AudienceJson::Contacts {},
            StatusAudience::Allow(users) => AudienceJson::Allow { users },
            StatusAudience::Deny(users) => AudienceJson::Deny { users },
        }
    }
}

/// `POST /v1/status`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostBody {
    /// The post's id, chosen by the device so that a retry is stored once (absent: the
    /// server chooses one). An id is never reused for another post.
    #[schema(value_type = Option<uuid::Uuid>)]
    #[serde(default)]
    pub post_id: Option<StatusId>,
    /// The content, encrypted by the client (1 to 16,384 bytes), in hex.
    #[schema(min_length = 2, max_length = 32768, pattern = "^([0-9a-fA-F]{2})+$")]
    pub payload_hex: String,
    /// Who may see it; absent: every contact.
    #[serde(default)]
    pub audience: AudienceJson,
}

/// A status post as a viewer sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusJson {
    /// Who posted it.
    #[schema(value_type = uuid::Uuid)]
    pub user_id: UserId,
    /// Its id.
    #[schema(value_type = uuid::Uuid)]
    pub post_id: StatusId,
    /// The content, encrypted by the client, in hex.
    pub payload_hex: String,
    /// When it was posted, ms since the Unix epoch.
    pub posted_ms: u64,
    /// When it expires (24 hours later), ms since the Unix epoch.
    pub expires_ms: u64,
}

impl From<&StatusPost> for StatusJson {
    fn from(p: &StatusPost) -> Self {
        Self { user_id: p.poster, post_id: p.post_id, payload_hex: hex::encode(&p.payload), posted_ms: p.posted_ms, expires_ms: p.expires_ms }
    }
}

/// One viewer of a post.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ViewerJson {
    /// Who saw it.
    #[schema(value_type = uuid::Uuid)]
    pub user_id: UserId,
    /// When they first did, ms since the Unix epoch.
    pub seen_ms: u64,
}

impl From<&StatusView> for ViewerJson {
    fn from(v: &StatusView) -> Self {
        Self { user_id: v.viewer, seen_ms: v.seen_ms }
    }
}

/// A post as its poster sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OwnStatusJson {
    /// Its id.
    #[schema(value_type = uuid::Uuid)]
    pub post_id: StatusId,
    /// The content as posted, in hex.
    pub payload_hex: String,
    /// Who may see it (lists sorted, repeats and the poster dropped).
    pub audience: AudienceJson,
    /// When it was posted, ms since the Unix epoch.
    pub posted_ms: u64,
    /// When it expires, ms since the Unix epoch.
    pub expires_ms: u64,
    /// How many viewers saw it (viewers with read receipts off are not counted).
    pub view_count: u64,
    /// Who saw it, the most recent first: at most 1,000.
    pub viewers: Vec<ViewerJson>,
}

impl From<OwnPost> for OwnStatusJson {
    fn from(o: OwnPost) -> Self {
        Self {
            post_id: o.post.post_id,
            payload_hex: hex::encode(&o.post.payload),
            audience: o.post.audience.into(),
            posted_ms: o.post.posted_ms,
            expires_ms: o.post.expires_ms,
            view_count: o.view_count as u64,
            viewers: o.viewers.iter().map(ViewerJson::from).collect(),
        }
    }
}

/// `GET /v1/status/mine`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OwnStatusesJson {
    /// The caller's live posts, newest first.
    pub statuses: Vec<OwnStatusJson>,
    /// The caller's read receipts are off, so viewers are not shown (WhatsApp's rule).
    pub viewers_hidden: bool,
}

impl From<OwnPosts> for OwnStatusesJson {
    fn from(o: OwnPosts) -> Self {
        Self { statuses: o.posts.into_iter().map(OwnStatusJson::from).collect(), viewers_hidden: o.viewers_hidden }
    }
}

/// The query of `GET /v1/status`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Continue after this post: the previous page's `next`.
    #[serde(default)]
    #[param(pattern = r"^([0-9]{1,19}\.[0-9a-f]{32}\.[0-9a-f]{32})?$")]
    pub after: Option<String>,
    /// Page size; 0 or absent: 50; capped at 100.
    #[serde(default)]
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub limit: u32,
}

/// A page of the feed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedJson {
    /// The statuses the caller may see, newest first.
    pub statuses: Vec<StatusJson>,
    /// Ask again with `after` = this for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn no_store<T: Serialize>(status: actix_web::http::StatusCode, body: &T) -> HttpResponse {
    HttpResponse::build(status).insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(body)
}

/// Posts a status: visible for 24 hours to the caller's contacts, or an allow or deny
/// list of them.
#[utoipa::path(post, path = "/v1/status", tag = "public", request_body = PostBody, security(("device_token" = [])), responses(
    (status = 201, description = "Posted", body = OwnStatusJson),
    (status = 200, description = "A retry: this post_id was posted already with the same content and audience", body = OwnStatusJson),
    (status = 400, description = "bad_request (not hex, an empty payload or allow list, an unknown field) or too_many_users (a list over 512)", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 409, description = "status_exists: post_id is another of the caller's posts", body = ErrorBody),
    (status = 413, description = "status_too_large: a payload over 16,384 bytes; or a body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 429, description = "rate_limited: 30 posts a day (Retry-After)", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn post(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<super::JsonObject>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let body: PostBody = super::from_object(body.into_inner())?;
    let payload = hex::decode(&body.payload_hex).map_err(|_| ApiError::BadRequest("payload_hex is not hex".into()))?;
    let (posted, created) = state.statuses.post(me.user_id, body.post_id, payload.into(), body.audience.into()).await?;
    // A retry finds its post with the views it has gathered since.
    let status = if created { actix_web::http::StatusCode::CREATED } else { actix_web::http::StatusCode::OK };
    Ok(no_store(status, &OwnStatusJson::from(posted)))
}

/// The statuses the caller may see (from contacts, within each post's audience), newest
/// first, live ones only; the caller's own are at `GET /v1/status/mine`.
#[utoipa::path(get, path = "/v1/status", tag = "public", security(("device_token" = [])), params(FeedQuery), responses(
    (status = 200, description = "A page of the feed", body = FeedJson),
    (status = 400, description = "bad_request: a bad query or continuation token", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn feed(req: HttpRequest, state: web::Data<ApiState>, query: web::Query<FeedQuery>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let q = query.into_inner();
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(text) => Some(FeedCursor::parse(text).ok_or_else(|| ApiError::BadRequest("after: not a continuation token".into()))?),
    };
    let (posts, next) = state.statuses.feed(me.user_id, after, q.limit as usize).await?;
    let page = FeedJson { statuses: posts.iter().map(StatusJson::from).collect(), next: next.map(|c| c.to_string()) };
    Ok(no_store(actix_web::http::StatusCode::OK, &page))
}

/// The caller's live statuses, newest first, each with who viewed it.
#[utoipa::path(get, path = "/v1/status/mine", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The caller's statuses", body = OwnStatusesJson),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn mine(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    Ok(no_store(actix_web::http::StatusCode::OK, &OwnStatusesJson::from(state.statuses.mine(me.user_id).await?)))
}

fn ids(path: &(String, String)) -> Result<(UserId, StatusId), ApiError> {
    let user: UserId = path.0.parse().map_err(|_| ApiError::BadRequest("user_id must be a UUID".into()))?;
    let post: StatusId = path.1.parse().map_err(|_| ApiError::BadRequest("post_id must be a UUID".into()))?;
    Ok((user, post))
}

/// Marks another user's status seen by the caller (its poster sees who viewed it, unless
/// the caller's read receipts are off).
#[utoipa::path(post, path = "/v1/status/{user_id}/{post_id}/seen", tag = "public", security(("device_token" = [])),
    params(("user_id" = String, Path, format = Uuid, description = "Who posted it"), ("post_id" = String, Path, format = Uuid, description = "The post")),
    responses(
        (status = 204, description = "Seen (also when it already was)"),
        (status = 400, description = "bad_request: not a UUID", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 404, description = "unknown_status: no such live post the caller may see", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn seen(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let (poster, post_id) = ids(&path)?;
    state.statuses.mark_seen(me.user_id, poster, post_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Deletes one of the caller's statuses, with its viewers.
#[utoipa::path(delete, path = "/v1/status/mine/{post_id}", tag = "public", security(("device_token" = [])),
    params(("post_id" = String, Path, format = Uuid, description = "The post")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "bad_request: not a UUID", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 404, description = "unknown_status: the caller has no such live post", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let post_id: StatusId = path.parse().map_err(|_| ApiError::BadRequest("post_id must be a UUID".into()))?;
    state.statuses.delete(me.user_id, post_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_read_as_documented_and_nothing_else() {
        let read = |json: &str| serde_json::from_str::<AudienceJson>(json);
        assert_eq!(read(r#"{"kind": "contacts"}"#).expect("contacts"), AudienceJson::Contacts {});
        let user = UserId::from_u128(7);
        assert_eq!(read(&format!(r#"{{"kind": "allow", "users": ["{user}"]}}"#)).expect("allow"), AudienceJson::Allow { users: vec![user] });
        assert_eq!(read(r#"{"kind": "deny", "users": []}"#).expect("deny"), AudienceJson::Deny { users: vec![] });
        for bad in [
            r#"{"kind": "contacts", "users": []}"#,
            r#"{"kind": "allow", "users": [], "x": 1}"#,
            r#"{"kind": "friends"}"#,
            r#"{"kind": "deny"}"#,
            r#"{"users": []}"#,
            r#""contacts""#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
        let body: PostBody = serde_json::from_str(r#"{"payload_hex": "00"}"#).expect("body");
        assert_eq!(body.audience, AudienceJson::Contacts {}, "every contact by default");
        assert_eq!(serde_json::to_value(AudienceJson::Contacts {}).expect("json"), serde_json::json!({ "kind": "contacts" }));
        assert!(serde_json::from_str::<PostBody>(r#"{"payload_hex": "00", "post_id": "x"}"#).is_err());
    }
}
