//! [`Manager`] (the owner of a manager process), [`ManagerBuilder`], [`Client`] (what opens
//! served values, and travels) and [`Snapshot`].

use std::fmt;
use std::io;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiproc_channel::pipe;
use multiproc_core::transport::packet::packet_pair;
use multiproc_process::{Builder, JoinHandle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::OpsBuf;
use crate::counter::Counter;
use crate::decode;
use crate::error::{OpError, ShutdownError, StartError};
use crate::link::{Connector, Link};
use crate::list::List;
use crate::map::Map;
use crate::op::{Batch, Decode, Pipeline, indexed, run};
use crate::server::{ServerArgs, manager_main};
use crate::target::Target;
use crate::value::Value;
use crate::wire::{Blob, Kind, Op, Reply, Stored};

/// How long [`Manager::shutdown`] waits for the process to exit before it kills it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Opens served values by name: what a [`Manager`] derefs to, and a handle of its own that can
/// be cloned, passed to `spawn` or sent in a message (it carries no secret and owns nothing:
/// the manager stops when its [`Manager`] owners are gone, whoever holds clients).
///
/// Values have names: `map("results")` in any process opens the same map, creating it empty
/// the first time. Opening a name as another kind, or with other Rust types, is an error
/// ([`OpError::is_wrong_type`]).
#[derive(Clone)]
pub struct Client {
    link: Arc<Link>,
}

impl Client {
    #[cfg(feature = "remote")]
    pub(crate) fn from_link(link: Arc<Link>) -> Self {
        Self { link }
    }

    #[cfg(feature = "remote")]
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    async fn open(
        &self,
        name: &str,
        kind: Kind,
        type_name: &str,
        init: Blob,
    ) -> Result<Target, OpError> {
        let op = Op::Open {
            name: name.to_owned(),
            kind,
            type_name: type_name.to_owned(),
            init,
        };
        let id = self.call(op, decode::id).await?;
        Ok(Target {
            link: self.link.clone(),
            id,
        })
    }

    /// The map called `name` (Python's `manager.dict()`), created empty if there is none.
    ///
    /// # Errors
    /// [`OpError::is_wrong_type`] when `name` is served as something else;
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a value created by a dropped call is found by the next.
    pub async fn map<K, V>(&self, name: &str) -> Result<Map<K, V>, OpError>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let type_name = std::any::type_name::<(K, V)>();
        let target = self
            .open(name, Kind::Map, type_name, Blob::default())
            .await?;
        Ok(Map::new(target))
    }

    /// The list called `name` (Python's `manager.list()`), created empty if there is none.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// # Cancel safety
    /// As [`map`](Self::map).
    pub async fn list<T>(&self, name: &str) -> Result<List<T>, OpError>
    where
        T: Serialize + DeserializeOwned,
    {
        let type_name = std::any::type_name::<T>();
        let target = self
            .open(name, Kind::List, type_name, Blob::default())
            .await?;
        Ok(List::new(target))
    }

    /// The value called `name` (Python's `Namespace`, `manager.Value`, or a registered
    /// object), created as `init` if there is none (`init` is ignored otherwise).
    ///
    /// # Errors
    /// As [`map`](Self::map); [`OpError::is_encode`] when `init` cannot be encoded.
    ///
    /// # Cancel safety
    /// As [`map`](Self::map).
    pub async fn value<T>(&self, name: &str, init: T) -> Result<Value<T>, OpError>
    where
        T: Serialize + DeserializeOwned,
    {
        let type_name = std::any::type_name::<T>();
        let init = Blob::encode(&init).map_err(OpError::encode)?;
        let target = self.open(name, Kind::Value, type_name, init).await?;
        Ok(Value::new(target))
    }

    /// The counter called `name`, created at 0 if there is none.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// # Cancel safety
    /// As [`map`](Self::map).
    pub async fn counter(&self, name: &str) -> Result<Counter, OpError> {
        let init = Blob::encode(&0i64).map_err(OpError::encode)?;
        let target = self.open(name, Kind::Counter, "i64", init).await?;
        Ok(Counter::new(target))
    }

    /// A batch for operations on this manager's values: one round trip, applied atomically.
    pub fn batch(&self) -> Batch {
        Batch::new(self.link.clone())
    }

    /// A pipeline to this manager: operations sent without waiting for each answer.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn pipeline(&self) -> Result<Pipeline, OpError> {
        Pipeline::open(&self.link.endpoint).await
    }

    /// A copy of everything the manager serves, taken atomically: what
    /// [`ManagerBuilder::restore`] starts a new manager from.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn snapshot(&self) -> Result<Snapshot, OpError> {
        self.call(Op::Snapshot, |answer| match decode::reply(answer)? {
            Reply::Snapshot(stored) => Ok(Snapshot(stored)),
            _ => Err(OpError::protocol(
                "the manager answered with an unexpected shape",
            )),
        })
        .await
    }

    /// Waits until the manager answers (a round trip with no operation).
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn ping(&self) -> Result<(), OpError> {
        let (results, n) = self.link.call_encoded(&mut OpsBuf::default()).await?;
        indexed(&results, n, &mut Vec::new()).map(drop)
    }

    /// Runs one operation on the manager and decodes its result.
    async fn call<R>(&self, op: Op, decode: Decode<R>) -> Result<R, OpError> {
        let op = crate::op::Op::general(self.link.endpoint.manager(), op, decode);
        run(&self.link, op).await
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("manager", &self.link.endpoint)
            .finish()
    }
}

impl Serialize for Client {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.link.endpoint.connector()?.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Client {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let connector = Connector::deserialize(deserializer)?;
        Ok(Client {
            link: Link::shared(connector),
        })
    }
}

/// Everything a manager served at one moment: its values, by name, as stored.
///
/// Take one with [`Client::snapshot`]; start a manager from it with
/// [`ManagerBuilder::restore`]. It is a serde type (keep it in a file, send it to another
/// process); values holding handles keep them open while the snapshot lives.
#[derive(Clone, Serialize, Deserialize)]
pub struct Snapshot(Stored);

impl Snapshot {
    /// The names of the values it holds.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.values.iter().map(|v| v.name.as_str())
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.0.values.len()
    }

    /// True when it holds no value.
    pub fn is_empty(&self) -> bool {
        self.0.values.is_empty()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("values", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

/// Options for starting a manager.
#[derive(Debug, Default)]
pub struct ManagerBuilder {
    restore: Option<Snapshot>,
    name: Option<String>,
}

impl ManagerBuilder {
    /// Serves what `snapshot` holds from the start (a restart after a crash, say), instead of
    /// nothing.
    pub fn restore(mut self, snapshot: Snapshot) -> Self {
        self.restore = Some(snapshot);
        self
    }

    /// Names the manager process (as `ps` shows it); default `multiproc-manager`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Starts the manager process and waits until it serves.
    ///
    /// # Errors
    /// [`StartError`] when the process cannot be started or dies before it serves.
    ///
    /// # Panics
    /// Outside a tokio runtime (with I/O and time drivers).
    ///
    /// # Cancel safety
    /// Dropping the future stops the manager it started.
    pub async fn start(self) -> Result<Manager, StartError> {
        let (send_end, recv_end) = packet_pair().map_err(StartError::new)?;
        let (stop_tx, stop_rx) = pipe::simplex::<()>().map_err(StartError::new)?;
        let args = ServerArgs {
            connector: recv_end,
            stop: stop_rx,
            restore: self.restore.map(|s| s.0),
        };
        let child = Builder::new()
            .name(self.name.unwrap_or_else(|| "multiproc-manager".into()))
            .spawn(args, manager_main)
            .map_err(StartError::new)?;
        // The manager's id only tells managers apart within a process: random is enough.
        let connector = Connector {
            manager: multiproc_core::random_key()[0],
            socket: send_end,
        };
        let manager = Manager {
            client: Client {
                link: Link::shared(connector),
            },
            owner: Arc::new(Owner {
                pid: child.pid(),
                child: Mutex::new(Some(child)),
                stop: Mutex::new(Some(stop_tx)),
            }),
        };
        manager.ping().await.map_err(StartError::new)?;
        Ok(manager)
    }
}

/// What keeps the manager process running: dropped with the last [`Manager`] clone.
struct Owner {
    pid: Option<u32>,
    child: Mutex<Option<JoinHandle<()>>>,
    /// Sending on it, or closing it, tells the manager to stop.
    stop: Mutex<Option<pipe::Sender<()>>>,
}

/// A running manager process that serves typed values to any process: Python's
/// `multiprocessing.Manager()`.
///
/// It derefs to a [`Client`], which opens values by name: [`map`](Client::map),
/// [`list`](Client::list), [`value`](Client::value), [`counter`](Client::counter). Clones share
/// the same process; it stops on [`shutdown`](Self::shutdown) or when the last clone is
/// dropped (the process is a daemon child too: it never outlives this one). Proxies and
/// clients do not keep it running.
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use multiproc::manager::Manager;
///
/// async fn child((d, l): (multiproc::manager::Map<String, u64>, multiproc::manager::List<u64>)) {
///     for i in 0..10 {
///         d.insert(format!("arg{i}"), i * i).await.unwrap();
///     }
///     l.extend(11..16).await.unwrap();
/// }
///
/// let manager = Manager::start().await?;
/// let d = manager.map::<String, u64>("d").await?;
/// let l = manager.list::<u64>("l").await?;
/// multiproc::spawn((d.clone(), l.clone()), child).await?;
/// assert_eq!(d.len().await?, 10);
/// assert_eq!(l.items().await?, [11, 12, 13, 14, 15]);
/// manager.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Manager {
    client: Client,
    owner: Arc<Owner>,
}

impl Manager {
    /// Starts a manager process serving nothing yet; see [`ManagerBuilder::start`].
    ///
    /// # Errors
    /// As [`ManagerBuilder::start`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// As [`ManagerBuilder::start`].
    pub async fn start() -> Result<Manager, StartError> {
        Self::builder().start().await
    }

    /// Options: restoring a snapshot, the process name.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// A [`Client`] of this manager, to hand to other processes (it does not keep the manager
    /// running).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The manager process's id.
    pub fn pid(&self) -> Option<u32> {
        self.owner.pid
    }

    /// True while the manager process runs.
    pub fn is_alive(&self) -> bool {
        let child = self.owner.child.lock().unwrap_or_else(|p| p.into_inner());
        child.as_ref().is_some_and(JoinHandle::is_alive)
    }

    /// Kills the manager process (`SIGKILL`): every operation in flight and every later one, on
    /// every proxy in every process, fails with [`OpError::is_manager_gone`]; what it served is
    /// lost (unless a [`Snapshot`] was taken).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&self) -> io::Result<()> {
        let child = self.owner.child.lock().unwrap_or_else(|p| p.into_inner());
        match child.as_ref() {
            Some(child) => child.kill(),
            None => Ok(()),
        }
    }

    /// Stops the manager and waits for its process to exit (killing it after 5 s). Operations
    /// after it, on every proxy, fail with [`OpError::is_manager_gone`]. Calling it again, or
    /// on a clone, returns at once.
    ///
    /// # Errors
    /// [`ShutdownError`] when the process did not exit cleanly (it was killed, say).
    ///
    /// # Cancel safety
    /// Once polled, the manager stops even if the future is dropped.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        let stop = self
            .owner
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut stop) = stop {
            let _ = stop.send(()).await;
        }
        let child = self
            .owner
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut child) = child else {
            return Ok(());
        };
        match child.join_timeout(SHUTDOWN_GRACE).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_timeout() => {
                let _ = child.kill();
                child.join().await.map_err(ShutdownError::new)
            }
            Err(e) => Err(ShutdownError::new(e)),
        }
    }
}

impl Deref for Manager {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("pid", &self.owner.pid)
            .field("client", &self.client)
            .finish()
    }
}
