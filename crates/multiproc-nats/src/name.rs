//! Names of distributed objects: what characters they may hold, since a name becomes part of a
//! stream name, a subject and a key.

use crate::error::InvalidName;

/// Checks that `name` is 1 to 64 of `[A-Za-z0-9_-]`.
pub(crate) fn check(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn names_that_become_subjects_are_plain() {
        assert!(check("jobs-1_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
    }
}
