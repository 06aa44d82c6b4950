//! What every proxy is underneath: the process's link to its manager and the value's id.
//!
//! A proxy serializes as the manager's [`Connector`] and the id, nothing else (no secret, no
//! connection state); the receiving process joins its own link to that manager on first use.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::OpError;
use crate::link::{Connector, Link};
use crate::op::{Batch, Pipeline};

/// A served value's address in the manager, with this process's link to it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) link: Arc<Link>,
    pub(crate) id: u32,
}

impl Target {
    pub(crate) fn manager(&self) -> u64 {
        self.link.endpoint.manager()
    }

    /// Runs one operation on this target's manager and decodes its result.
    pub(crate) async fn run<R>(&self, op: crate::op::Op<R>) -> Result<R, OpError> {
        crate::op::run(&self.link, op).await
    }

    pub(crate) fn batch(&self) -> Batch {
        Batch::new(self.link.clone())
    }

    pub(crate) async fn pipeline(&self) -> Result<Pipeline, OpError> {
        Pipeline::open(&self.link.endpoint).await
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.link.endpoint.connector()?, self.id).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (connector, id) = <(Connector, u32)>::deserialize(deserializer)?;
        Ok(Target {
            link: Link::shared(connector),
            id,
        })
    }
}

/// The traits every proxy has, all through its [`Target`]: `Clone` and `Debug`, and
/// `Serialize`/`Deserialize` as the target alone. A proxy is a struct with a `target` field and
/// a `new(Target)` constructor.
macro_rules! proxy_traits {
    ($name:ident $(<$($p:ident),+>)?) => {
        impl$(<$($p),+>)? Clone for $name$(<$($p),+>)? {
            fn clone(&self) -> Self {
                Self::new(self.target.clone())
            }
        }

        impl$(<$($p),+>)? std::fmt::Debug for $name$(<$($p),+>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("id", &self.target.id)
                    .field("manager", &self.target.link.endpoint)
                    .finish()
            }
        }

        impl$(<$($p),+>)? serde::Serialize for $name$(<$($p),+>)? {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(&self.target, serializer)
            }
        }

        impl<'de $(, $($p),+)?> serde::Deserialize<'de> for $name$(<$($p),+>)? {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <$crate::target::Target as serde::Deserialize>::deserialize(deserializer)
                    .map(Self::new)
            }
        }
    };
}
pub(crate) use proxy_traits;
