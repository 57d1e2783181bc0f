//! What rustls's unbuffered states mean for the adapter's buffers: records decrypted into
//! plaintext, TLS output encoded for sending, and the record framing read without rustls.

use std::cell::Cell;

use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

use super::{MAX_FRAGMENT, Next, RECORD_OVERHEAD};

/// Handles one state. `data`: plaintext to encrypt once the connection may send it.
pub(super) fn handle<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
    data: Option<&[u8]>,
    peer_closed: &Cell<bool>,
) -> (usize, Result<Next, rustls::Error>) {
    let UnbufferedStatus { discard, state } = status;
    let next = match state {
        Err(e) => Err(e),
        Ok(ConnectionState::ReadTraffic(mut r)) => loop {
            match r.next_record() {
                Some(Ok(rec)) => plain.extend_from_slice(rec.payload),
                Some(Err(e)) => break Err(e),
                None => break Ok(Next::Again),
            }
        },
        Ok(ConnectionState::EncodeTlsData(mut e)) => match encode(&mut e, out, 4096) {
            Ok(()) => Ok(Next::Again),
            Err(e) => Err(rustls::Error::General(format!("encoding TLS data: {e}"))),
        },
        // The encoded bytes are in `out`, which the caller sends before anything else.
        Ok(ConnectionState::TransmitTlsData(t)) => {
            t.done();
            Ok(Next::Again)
        }
        Ok(ConnectionState::BlockedHandshake) => Ok(Next::NeedData),
        Ok(ConnectionState::WriteTraffic(mut w)) => match data {
            Some(d) if !d.is_empty() => {
                let at = out.len();
                let records = d.len().div_ceil(MAX_FRAGMENT);
                out.resize(at + d.len() + records * RECORD_OVERHEAD, 0);
                let r = match w.encrypt(d, &mut out[at..]) {
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => {
                        out.resize(at + required_size, 0);
                        w.encrypt(d, &mut out[at..])
                    }
                    r => r,
                };
                match r {
                    Ok(n) => {
                        out.truncate(at + n);
                        Ok(Next::Ready)
                    }
                    Err(e) => {
                        out.truncate(at);
                        Err(rustls::Error::General(format!("encrypting: {e}")))
                    }
                }
            }
            _ => Ok(Next::Ready),
        },
        Ok(ConnectionState::PeerClosed) => {
            peer_closed.set(true);
            Ok(Next::Again)
        }
        Ok(ConnectionState::Closed) => {
            peer_closed.set(true);
            Ok(Next::Closed)
        }
        // Early data is never accepted (max_early_data_size is 0).
        Ok(_) => Err(rustls::Error::General("unexpected TLS state".into())),
    };
    (discard, next)
}

/// Whether the records in `data` (which begins at a record boundary) include a handshake
/// record.
pub(super) fn has_handshake_record(data: &[u8]) -> bool {
    const HANDSHAKE: u8 = 22;
    let mut at = 0usize;
    while let Some(header) = data.get(at..at + 5) {
        if header[0] == HANDSHAKE {
            return true;
        }
        at += 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
    }
    false
}

/// Appends one chunk of the TLS output rustls has queued, if that is what `status` offers;
/// whether it did. Called until it does not (a TLS 1.3 server that fails on the client's hello
/// has queued its ServerHello and then the alert, encrypted under the handshake keys).
pub(super) fn encode_queued<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    out: &mut Vec<u8>,
) -> bool {
    match status.state {
        Ok(ConnectionState::EncodeTlsData(mut e)) => encode(&mut e, out, 512).is_ok(),
        _ => false,
    }
}

/// Appends what `e` encodes to `out`, starting with `guess` bytes of room and growing to what
/// rustls says it needs; `out` is left as it was on failure.
fn encode<Data>(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, Data>,
    out: &mut Vec<u8>,
    guess: usize,
) -> Result<(), EncodeError> {
    let at = out.len();
    out.resize(at + guess, 0);
    let r = match e.encode(&mut out[at..]) {
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(at + required_size, 0);
            e.encode(&mut out[at..])
        }
        r => r,
    };
    match r {
        Ok(n) => {
            out.truncate(at + n);
            Ok(())
        }
        Err(err) => {
            out.truncate(at);
            Err(err)
        }
    }
}

/// Writes a close_notify alert to `out` when the connection may still send; its length.
pub(super) fn close_notify<Data>(status: UnbufferedStatus<'_, '_, Data>, out: &mut [u8]) -> usize {
    match status.state {
        Ok(ConnectionState::WriteTraffic(mut w)) => w.queue_close_notify(out).unwrap_or(0),
        _ => 0,
    }
}
