//! TEMPORARY stub until the seccomp branch lands.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unknown seccomp policy {0}")]
    Unknown(String),
}
#[derive(Debug, Clone)]
pub struct SeccompPolicy;
impl SeccompPolicy {
    pub fn parse(_text: &str, _origin: &str) -> Result<Self, SeccompError> { Ok(SeccompPolicy) }
    pub fn builtin(name: &str) -> Result<Self, SeccompError> { if name == "default" { Ok(SeccompPolicy) } else { Err(SeccompError::Unknown(name.into())) } }
    pub fn builtin_names() -> &'static [&'static str] { &["default"] }
    pub fn compile(&self) -> Result<BpfProgram, SeccompError> { Ok(BpfProgram) }
}
#[derive(Debug, Clone)]
pub struct BpfProgram;
