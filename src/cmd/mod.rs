//! One module per user-visible verb: orchestration only, joining `tpm` and `luks` through
//! the plans of `tokens`.

pub mod approve;
pub mod enroll;
pub mod escrow;
pub mod fence;
pub mod finish_provisioning;
pub mod initrd_config;
pub mod predict;
pub mod provision;
pub mod recover;
pub mod remove;
pub mod revoke;
pub mod srk_public;
pub mod status;
pub mod unlock;
pub mod update_approvals;
