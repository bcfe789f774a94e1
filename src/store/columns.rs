//! Ids as database columns: a `UserId`, `DeviceId`, `ConversationId`, `MediaId` or
//! `StatusId` binds and reads exactly as the UUID underneath (PostgreSQL `uuid`, CQL
//! `uuid`). Written once here so that the backends bind typed ids directly instead of
//! unwrapping them at every call.

use bytes::BytesMut;
use scylla::cluster::metadata::ColumnType;
use scylla::deserialize::value::DeserializeValue;
use scylla::deserialize::{DeserializationError, FrameSlice, TypeCheckError};
use scylla::serialize::SerializationError;
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, WrittenCellProof};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use crate::ids::{ConversationId, DeviceId, MediaId, StatusId, UserId};

macro_rules! uuid_column {
    ($name:ident) => {
        impl ToSql for $name {
            fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.uuid().to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <Uuid as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                Uuid::from_sql(ty, raw).map(Self::from_uuid)
            }

            fn accepts(ty: &Type) -> bool {
                <Uuid as FromSql>::accepts(ty)
            }
        }

        impl<'frame, 'metadata> DeserializeValue<'frame, 'metadata> for $name {
            fn type_check(typ: &ColumnType) -> Result<(), TypeCheckError> {
                <Uuid as DeserializeValue<'frame, 'metadata>>::type_check(typ)
            }

            fn deserialize(typ: &'metadata ColumnType<'metadata>, v: Option<FrameSlice<'frame>>) -> Result<Self, DeserializationError> {
                <Uuid as DeserializeValue<'frame, 'metadata>>::deserialize(typ, v).map(Self::from_uuid)
            }
        }

        impl SerializeValue for $name {
            fn serialize<'b>(&self, typ: &ColumnType, writer: CellWriter<'b>) -> Result<WrittenCellProof<'b>, SerializationError> {
                self.uuid().serialize(typ, writer)
            }
        }
    };
}

uuid_column!(UserId);
uuid_column!(DeviceId);
uuid_column!(ConversationId);
uuid_column!(MediaId);
uuid_column!(StatusId);
