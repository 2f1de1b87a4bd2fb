//! Rules proposed from an OpenAPI document.

use super::propose::Proposal;

#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("{0}")]
    Read(String),
}

pub fn learn(_path: &std::path::Path) -> Result<Proposal, OpenApiError> {
    Err(OpenApiError::Read("not yet".into()))
}
