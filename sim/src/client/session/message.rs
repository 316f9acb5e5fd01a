//! Telling WireGuard messages apart by their four-byte header, so the session can count and
//! record handshake messages going either way without parsing them (boringtun does that).

/// WireGuard message types (first byte of every message; the next three are zero).
pub const MSG_INITIATION: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;
pub const MSG_COOKIE_REPLY: u8 = 3;
pub const MSG_DATA: u8 = 4;

/// The WireGuard message type of `datagram`, if it has a well-formed header.
pub fn message_type(datagram: &[u8]) -> Option<u8> {
    match datagram {
        [t @ MSG_INITIATION..=MSG_DATA, 0, 0, 0, ..] => Some(*t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_needs_zero_reserved_bytes() {
        assert_eq!(message_type(&[1, 0, 0, 0, 9]), Some(MSG_INITIATION));
        assert_eq!(message_type(&[4, 0, 0, 0]), Some(MSG_DATA));
        assert_eq!(message_type(&[1, 0, 1, 0]), None);
        assert_eq!(message_type(&[0, 0, 0, 0]), None);
        assert_eq!(message_type(&[5, 0, 0, 0]), None);
        assert_eq!(message_type(&[4]), None);
    }
}
