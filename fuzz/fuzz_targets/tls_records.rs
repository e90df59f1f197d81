//! The TLS records a tunnel opens after the handshake (`transport::records`): the record
//! header, the post-handshake handshake messages (KeyUpdate, NewSessionTicket) and alerts, as
//! a peer could send them once decrypted, and records damaged on the way.
//!
//! Invariants checked besides "never panics":
//! - `record_len` accepts only a header of the protected type with a length within bounds;
//! - a record sealed with a key opens with the same key to its content type and content;
//! - any changed byte of a sealed record makes it fail to open (and is an error, not a panic);
//! - a KeyUpdate is read back as written, whatever follows it in the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::records::{
    check_alert, open_record, parse_post_handshake, record_len, seal_record, sealed_len,
    ContentType, PostHandshake, RecordKey, MAX_RECORD_PLAINTEXT, RECORD_HEADER_LEN,
};
use rustls::crypto::cipher::Iv;
use rustls::ConnectionTrafficSecrets;

fn key() -> RecordKey {
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: [7u8; 32].into(),
        iv: Iv::copy(&[0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    };
    RecordKey::new(secrets, 0).expect("a valid key")
}

fuzz_target!(|data: &[u8]| {
    // The header, as read off the wire.
    if let Ok(Some(len)) = record_len(data) {
        assert!(len > RECORD_HEADER_LEN);
        assert_eq!(data[0], 23);
    }

    // The decrypted content a peer chose.
    if let Ok(messages) = parse_post_handshake(data) {
        assert!(messages.len() <= data.len() / 4);
    }
    let _ = check_alert(data);

    // A record sealed, opened, and opened again with one byte changed.
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let content = &content[..content.len().min(MAX_RECORD_PLAINTEXT)];
    let content_type = match selector % 3 {
        0 => ContentType::Alert,
        1 => ContentType::Handshake,
        _ => ContentType::ApplicationData,
    };
    let mut record = vec![0u8; sealed_len(content.len())];
    let len = seal_record(&mut key(), content_type, content, &mut record).expect("room to seal");
    assert_eq!(len, record.len());
    assert_eq!(record_len(&record), Ok(Some(len)));
    let mut opened = record.clone();
    let (opened_type, range) = open_record(&mut key(), &mut opened).expect("opens");
    assert_eq!(opened_type, content_type);
    assert_eq!(&opened[range], content);
    let at = usize::from(selector) * 131 % record.len();
    let mut damaged = record;
    damaged[at] ^= 1 + (selector >> 1);
    assert!(open_record(&mut key(), &mut damaged).is_err());

    // A KeyUpdate at the front is read as such.
    let mut key_update = vec![24, 0, 0, 1, selector & 1];
    key_update.extend_from_slice(content);
    if let Ok(messages) = parse_post_handshake(&key_update) {
        assert_eq!(
            messages[0],
            PostHandshake::KeyUpdate {
                requested: selector & 1 == 1
            }
        );
    }
});
