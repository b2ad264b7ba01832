//! Sessions salted with the SRK and encrypting their parameters, so secrets never cross the
//! bus in clear and a TPM without the SRK's private key cannot complete them.

use tss_esapi::Context;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::SymmetricDefinition;

use super::error::{TpmError, command_error};

/// What the session encrypts: command parameters (`decrypt`), response parameters
/// (`encrypt`), or both.
#[derive(Clone, Copy)]
pub struct Encrypt {
    pub command: bool,
    pub response: bool,
}

pub fn start(
    ctx: &mut Context,
    salt_key: KeyHandle,
    kind: SessionType,
    encrypt: Encrypt,
) -> Result<AuthSession, TpmError> {
    let session = ctx
        .start_auth_session(
            Some(salt_key),
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| command_error("StartAuthSession", e))?
        .ok_or_else(|| TpmError::Invalid("StartAuthSession returned no session".into()))?;
    let (attrs, mask) = SessionAttributesBuilder::new()
        .with_decrypt(encrypt.command)
        .with_encrypt(encrypt.response)
        .with_continue_session(true)
        .build();
    if let Err(e) = ctx.tr_sess_set_attributes(session, attrs, mask) {
        flush(ctx, session);
        return Err(command_error("TRSess_SetAttributes", e));
    }
    Ok(session)
}

/// Flushes a session; errors are ignored because there is nothing left to do about them
/// and the caller is already reporting the failure that matters.
pub fn flush(ctx: &mut Context, session: AuthSession) {
    if let Some(handle) = session_handle(session) {
        let _ = ctx.flush_context(handle);
    }
}

fn session_handle(session: AuthSession) -> Option<ObjectHandle> {
    match session {
        AuthSession::HmacSession(_) | AuthSession::PolicySession(_) => Some(ObjectHandle::from(
            tss_esapi::handles::SessionHandle::from(session),
        )),
        AuthSession::Password => None,
    }
}
