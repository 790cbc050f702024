//! DISCONNECT and AUTH (sections 3.14 and 3.15).
//!
//! ```text
//! DISCONNECT:  v3.1.1: empty
//!              v5: reason code | properties (both may be left out for a normal disconnection
//!                  without properties, the properties alone when there are none)
//! AUTH (v5):   reason code | properties (both may be left out for a success without properties)
//! ```

use bytes::BytesMut;

use crate::mqtt::error::MqttError;
use crate::mqtt::properties::Properties;
use crate::mqtt::publish::{
    decode_v5_reason_and_properties, encode_v5_reason_and_properties, v5_reason_and_properties_len,
    validate_v5_tail, Shortening,
};
use crate::mqtt::reason::ReasonCode;
use crate::mqtt::wire::Reader;
use crate::mqtt::{PacketType, ProtocolVersion};

/// The connection ends: from the client in v3.1.1, from either side in v5.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Why (v5; v3.1.1 has none and means [`ReasonCode::NORMAL_DISCONNECTION`]).
    pub reason_code: ReasonCode,
    /// DISCONNECT properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

/// A step of an extended authentication exchange (v5 only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue Authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// AUTH properties: Authentication Method and Data, Reason String, User Property.
    pub properties: Properties,
}

impl Disconnect {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Disconnect, MqttError> {
        match version {
            ProtocolVersion::V5 => {
                let (reason_code, properties) = decode_v5_reason_and_properties(reader)?;
                Ok(Disconnect {
                    reason_code,
                    properties,
                })
            }
            ProtocolVersion::V311 => Ok(Disconnect::default()),
        }
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        v5_reason_and_properties_len(
            version,
            self.reason_code,
            &self.properties,
            Shortening::ReasonCodeAlone,
        )
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        encode_v5_reason_and_properties(
            version,
            self.reason_code,
            &self.properties,
            Shortening::ReasonCodeAlone,
            out,
        );
    }

    pub(crate) fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        match version {
            ProtocolVersion::V5 => {
                validate_v5_tail(PacketType::Disconnect, self.reason_code, &self.properties)
            }
            ProtocolVersion::V311 => Ok(()),
        }
    }
}

impl Auth {
    pub(crate) fn decode_body(reader: &mut Reader) -> Result<Auth, MqttError> {
        let (reason_code, properties) = decode_v5_reason_and_properties(reader)?;
        Ok(Auth {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self) -> usize {
        v5_reason_and_properties_len(
            ProtocolVersion::V5,
            self.reason_code,
            &self.properties,
            Shortening::NotReasonCodeAlone,
        )
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        encode_v5_reason_and_properties(
            ProtocolVersion::V5,
            self.reason_code,
            &self.properties,
            Shortening::NotReasonCodeAlone,
            out,
        );
    }

    pub(crate) fn validate(&self) -> Result<(), MqttError> {
        validate_v5_tail(PacketType::Auth, self.reason_code, &self.properties)
    }
}
