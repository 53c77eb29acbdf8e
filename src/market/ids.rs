//! Random ids of stored objects (`acc_…`, `sub_…`) and the random part of key secrets.

use rand::Rng;
use rand::distr::Alphanumeric;

/// `n` random ASCII letters and digits.
pub(crate) fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}
