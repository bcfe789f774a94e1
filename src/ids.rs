//! Opaque identifiers: users, devices, conversations, media and status posts.
//!
//! Each is a UUID underneath (16 raw bytes on the wire, a `uuid` column in PostgreSQL and
//! ScyllaDB, a `u128` key in redb), but each is its own type, so a device id passed where
//! a user id is expected, or two ids swapped in a call, does not compile. The conversion
//! to and from [`Uuid`] is explicit (`from_uuid`, `uuid`) and happens only at the edges:
//! the wire (`protocol`), the stores and the HTTP API. Serialized forms (serde, postcard)
//! are exactly those of the inner UUID, so records written before these types existed
//! read back unchanged.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// What every id type shares: the UUID underneath. Used by the edges that move ids in
/// and out (the wire's 16-byte fields, the stores), never to convert one id type into
/// another.
pub trait Id: Copy {
    /// Wraps a UUID.
    fn from_uuid(uuid: Uuid) -> Self;
    /// The UUID underneath.
    fn uuid(self) -> Uuid;
}

impl Id for Uuid {
    fn from_uuid(uuid: Uuid) -> Self {
        uuid
    }

    fn uuid(self) -> Uuid {
        self
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID read from the wire or a store.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID underneath, for the wire and the stores.
            pub const fn uuid(self) -> Uuid {
                self.0
            }

            /// A fresh random (version 4) id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The all-zero id (an unset field).
            pub const fn nil() -> Self {
                Self(Uuid::nil())
            }

            /// The 16 bytes, big-endian (the wire form).
            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// As a 128-bit integer (the redb key form).
            pub const fn as_u128(self) -> u128 {
                self.0.as_u128()
            }

            /// From a 128-bit integer (the redb key form).
            pub const fn from_u128(v: u128) -> Self {
                Self(Uuid::from_u128(v))
            }
        }

        impl Id for $name {
            fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            /// Parses the hyphenated (or simple) text form of a UUID.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A user account (one phone number).
    UserId,
    "UserId"
);
uuid_id!(
    /// One device (phone, desktop, web) of a user.
    DeviceId,
    "DeviceId"
);
uuid_id!(
    /// A 1:1 or group conversation.
    ConversationId,
    "ConversationId"
);
uuid_id!(
    /// One status post (WhatsApp's "Status"), unique among its poster's posts; chosen by
    /// the posting device (a retry then stores nothing twice) or by the server.
    StatusId,
    "StatusId"
);
uuid_id!(
    /// One uploaded file (an encrypted attachment or a public image rendition). It is also
    /// the tus upload's id: the upload URL and the download URL are `/v1/media/{id}`.
    MediaId,
    "MediaId"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_forms_are_those_of_the_inner_uuid() {
        let uuid = Uuid::new_v4();
        let user = UserId::from_uuid(uuid);
        assert_eq!(postcard::to_allocvec(&user).expect("encode"), postcard::to_allocvec(&uuid).expect("encode"));
        assert_eq!(serde_json::to_string(&user).expect("json"), serde_json::to_string(&uuid).expect("json"));
        let back: UserId = postcard::from_bytes(&postcard::to_allocvec(&uuid).expect("encode")).expect("decode");
        assert_eq!(back, user);
    }

    #[test]
    fn text_forms_round_trip() {
        let device = DeviceId::random();
        assert_eq!(device.to_string().parse::<DeviceId>().expect("parse"), device);
        assert_eq!(DeviceId::from_u128(device.as_u128()), device);
    }
}
