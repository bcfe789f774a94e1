//! HTTP surfaces: the public API (accounts, devices, contact discovery, privacy and
//! blocks, Status, history, health, metrics, the WebSocket upgrade, the key directory's mirrors) and the admin API on its own listener behind a token,
//! with the SRE console (static files) beside it; the web client at `/app/` (`web_app`).

pub mod account;
pub mod admin;
pub mod api;
pub mod console;
pub mod contacts;
pub mod history;
pub mod inbox;
pub mod keys;
pub mod openapi;
pub mod pairing;
pub mod privacy;
pub mod profiles;
pub mod status;
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

/// The object with every top-level number that is a whole non-negative number written
/// with a fraction (`5.0`) turned into an integer: JSON Schema counts `5.0` as an integer,
/// so a body the OpenAPI document allows must be read as one. 2^64 (how JavaScript writes
/// the largest `u64`, 18446744073709551615) reads as that largest `u64`.
pub fn integral_numbers(mut body: JsonObject) -> JsonObject {
    for value in body.values_mut() {
        if let serde_json::Value::Number(n) = value
            && n.as_u64().is_none()
            && let Some(f) = n.as_f64()
            && f >= 0.0
            && f.fract() == 0.0
            && f <= 18_446_744_073_709_551_616.0
        {
            *value = serde_json::Value::from(f as u64);
        }
    }
    body
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

    #[test]
    fn whole_numbers_written_with_a_fraction_read_as_integers() {
        let body = serde_json::json!({ "a": 5.0, "b": 5.5, "c": -1.0, "d": 7, "e": "5.0", "f": 1e30, "g": 18446744073709551615.0 });
        let serde_json::Value::Object(body) = body else { unreachable!() };
        let out = serde_json::Value::Object(super::integral_numbers(body));
        assert_eq!(out, serde_json::json!({ "a": 5, "b": 5.5, "c": -1.0, "d": 7, "e": "5.0", "f": 1e30, "g": u64::MAX }));
    }
}
