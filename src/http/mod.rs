//! HTTP surfaces: the public API (accounts, devices, contact discovery, privacy and
//! blocks, history, health, metrics, the WebSocket upgrade, the key directory's mirrors) and the admin API on its own listener behind a token,
//! with the SRE console (static files) beside it; the web client at `/app/` (`web_app`).

pub mod admin;
pub mod api;
pub mod console;
pub mod contacts;
pub mod keys;
pub mod openapi;
pub mod pairing;
pub mod privacy;
pub mod profiles;
pub mod web_app;

use actix_web::HttpRequest;

/// A JSON object body, for the partial updates (PATCH): serde would also read a struct
/// from an array (`[null, null]`), which is not an object and must be refused.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A PATCH body (an object) as `T`; a field of the wrong type or an unknown one is
/// `bad_request`.
pub fn from_object<T: serde::de::DeserializeOwned>(body: JsonObject) -> Result<T, api::ApiError> {
    serde_json::from_value(serde_json::Value::Object(body)).map_err(|e| api::ApiError::BadRequest(e.to_string()))
}

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// A duration in milliseconds as an operator reads it: `850 ms`, `12.3 s`, `4 min 10 s`,
/// `2 h 5 min`.
pub fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_an_operator_expects() {
        assert_eq!(super::ago(850), "850 ms");
        assert_eq!(super::ago(12_345), "12.3 s");
        assert_eq!(super::ago(250_000), "4 min 10 s");
        assert_eq!(super::ago(7_500_000), "2 h 5 min");
    }
}
