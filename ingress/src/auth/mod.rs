//! Authentication: argon2id password hashes, short-lived JWT access tokens, rotating refresh
//! tokens, the extractors that guard routes by role or admission, and the login/register rate
//! limiter.

pub mod admission;
pub mod extract;
pub mod password;
pub mod rate_limit;
pub mod tokens;
