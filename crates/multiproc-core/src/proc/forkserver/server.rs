//! The server's side: the loop run by the re-executed copy, before `main` and single-threaded,
//! and what a forked child does to become the requested child before it enters like a
//! re-executed one.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;

use super::clone::{Forked, Forker};
use super::request::{
    NAME_ROOM, REQUEST_MAX, Request, SERVER_NAME, SLOT_BYTES, SLOT_MAGIC, slot_offset,
};
use crate::SharedFd;
use crate::proc::bootstrap::{self, EntryPoint};
use crate::shm::SharedRegion;
use crate::sys::{self, Direction};

/// The entry point that makes a re-executed copy of this program the fork server.
pub(super) fn entry() -> EntryPoint {
    EntryPoint::new(ForkServer, serve)
}

/// The server's entry point, as a zero-sized function value for [`EntryPoint`].
#[derive(Clone, Copy)]
struct ForkServer;

/// The server's body: answers requests until the parent closes its end, then exits.
fn serve(_: ForkServer, socket: OwnedFd) {
    // Die with the parent even if something kept its end of the socket open.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // Keep none of the parent's streams open: each child gets the ones its request names.
    if let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        for target in 0..3 {
            // SAFETY: `dup2` onto 0, 1 and 2, numbers that nothing in this process owns as an
            // `OwnedFd` (std's streams use them by number); `null` stays open.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), target) };
        }
    }
    // The first packet after the hello: the parent's slot, where `clone` leaves each pid (one
    // word per request in flight, request `n` in word `n % SLOTS`).
    let mut fds: Vec<OwnedFd> = Vec::new();
    let slot = match receive(&socket, &mut [0u8; 8], &mut fds) {
        Some(got) if got == SLOT_MAGIC.len() && fds.len() == 1 => fds.pop(),
        Some(_) => None,
        None => std::process::exit(0),
    }
    .and_then(|fd| SharedRegion::from_received(SharedFd::new(fd), SLOT_BYTES).ok());
    let forker = match &slot {
        Some(_) => Forker::new(),
        None => Err(Errno::NOSYS),
    };
    let forker = forker.and_then(|forker| match ArgvArea::of_self() {
        Ok(argv) => Ok((forker, argv)),
        Err(_) => Err(Errno::NOSYS),
    });
    // Most requests ask for the affinity the server has (the parent's): their children keep it.
    let own_affinity = affinity();
    let mut inbox = Inbox::new();
    // Every packet is a request, numbered in order from 0 on both sides, answered or not.
    let mut number: u64 = 0;
    loop {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let buf = inbox.get();
        let Some(len) = receive(&socket, buf, &mut fds) else {
            break;
        };
        let this = number;
        number += 1;
        // The request is dropped (its descriptors closed, its strings freed) only after the
        // answer is sent: the parent waits for the answer, not for that.
        let mut done = None;
        let answer: Result<u32, Errno> = match (&forker, &slot, len > REQUEST_MAX) {
            (_, _, true) => Err(Errno::MSGSIZE),
            (Err(errno), _, _) => Err(*errno),
            (_, None, _) => Err(Errno::NOSYS),
            (Ok((forker, argv)), Some(words), false) => match Request::parse(&buf[..len], fds) {
                Err(errno) => Err(errno),
                Ok(request) => {
                    let word = words.atomic_u32(slot_offset(this)).as_ptr() as usize;
                    match forker.fork(word) {
                        Ok(Forked::Child) => run_child(socket, slot, request, argv, &own_affinity),
                        // The child holds its own copies of the request's descriptors.
                        Ok(Forked::Parent(pid)) => {
                            done = Some(request);
                            Ok(pid)
                        }
                        Err(errno) => Err(errno),
                    }
                }
            },
        };
        let answer = match answer {
            Ok(pid) => pid as i32,
            Err(errno) => -errno.raw_os_error(),
        };
        if !send_answer(&socket, answer) {
            break;
        }
        drop(done);
    }
    std::process::exit(0);
}

/// Sends one answer, waiting while the parent's queue is full (it reads answers while it waits
/// to send); false when the parent is gone.
fn send_answer(socket: &OwnedFd, answer: i32) -> bool {
    loop {
        match sys::send_with_fds(socket.as_fd(), &answer.to_le_bytes(), &[]) {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !matches!(
                    sys::wait_ready(socket.as_fd(), Direction::Write, None),
                    Ok(true)
                ) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// The server's receive buffer, [`REQUEST_MAX`] bytes that its children do not inherit
/// (`MADV_DONTFORK`). The server writes each request there after forking the last child, so a
/// page of it shared with that child would be copied (a copy-on-write fault) on every request,
/// before the next `clone`; and `clone` has fewer pages to share. A child parses nothing from
/// it: the request is decoded (into the server's heap, which the child inherits) before `clone`.
/// Falls back to an ordinary heap buffer if the mapping cannot be made (and works, only slower,
/// if the advice is refused).
struct Inbox {
    /// The buffer's start: a raw pointer, not a reference, because in a forked child it points
    /// at nothing (the child never uses it). Never unmapped: it lives as long as the server.
    start: *mut u8,
}

impl Inbox {
    fn new() -> Inbox {
        // SAFETY: a new private anonymous mapping; the kernel picks the address.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REQUEST_MAX,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Inbox {
                start: Vec::leak(vec![0u8; REQUEST_MAX]).as_mut_ptr(),
            };
        }
        // SAFETY: advice on the mapping just made, which nothing else uses. If it fails, the
        // children share the buffer as they would any heap memory: slower, not wrong.
        unsafe { libc::madvise(start, REQUEST_MAX, libc::MADV_DONTFORK) };
        Inbox {
            start: start.cast(),
        }
    }

    /// The buffer, in the server only (never in a forked child, which does not have it).
    fn get(&mut self) -> &mut [u8] {
        // SAFETY: `start` is `REQUEST_MAX` readable and writable bytes in the server (a mapping
        // or a leaked vector, never freed); `&mut self` makes this slice the only one.
        unsafe { std::slice::from_raw_parts_mut(self.start, REQUEST_MAX) }
    }
}

/// Waits for the next packet on the server's socket and reads it into `buf` and `fds`: its
/// length, more than `buf.len()` if it was truncated or lost descriptors; `None` at the end of
/// the stream (or on an error, which ends the server too).
fn receive(socket: &OwnedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Option<usize> {
    loop {
        if !matches!(
            sys::wait_ready(socket.as_fd(), Direction::Read, None),
            Ok(true)
        ) {
            return None;
        }
        match sys::recv_with_fds(socket.as_fd(), buf, fds) {
            Ok(got) if got.bytes == 0 => return None,
            Ok(got) if got.truncated || got.fds_truncated => return Some(buf.len() + 1),
            Ok(got) => return Some(got.bytes),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return None,
        }
    }
}

impl Request {
    /// Makes this process what the request describes, and gives back its control socket.
    /// `own_affinity` is this process's CPU affinity, which a request that asks for the same
    /// one need not set again.
    fn apply(self, argv: &ArgvArea, own_affinity: &[u8]) -> io::Result<OwnedFd> {
        for (target, stream) in self.streams.into_iter().enumerate() {
            let target = target as i32;
            match stream {
                // SAFETY: `dup2`/`close` on 0, 1 and 2, which nothing in this process owns as
                // an `OwnedFd`; `fd` stays open for the call.
                Some(fd) => unsafe {
                    if libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&fd), target) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                },
                // SAFETY: as above; the parent had no such stream, so neither does its child.
                None => unsafe {
                    libc::close(target);
                },
            }
        }
        rustix::process::fchdir(&self.cwd)?;
        if !self.affinity.is_empty() && self.affinity != own_affinity {
            // SAFETY: `cpu_set_t` is plain bytes, valid when zeroed.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            let size = self
                .affinity
                .len()
                .min(std::mem::size_of::<libc::cpu_set_t>());
            // SAFETY: copies `size` bytes, no more than either side holds; they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.affinity.as_ptr(),
                    (&raw mut set).cast::<u8>(),
                    size,
                );
            }
            // SAFETY: `set` is an initialised `cpu_set_t` of the size given. A failure (a CPU
            // gone offline) keeps the server's affinity, which is the parent's at its start.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        }
        set_environment(self.env);
        argv.write(&self.name);
        Ok(self.control)
    }
}

unsafe extern "C" {
    /// The C library's environment: a null-terminated array of `KEY=value` strings.
    static mut environ: *mut *mut libc::c_char;
}

/// Makes `vars` (`KEY=value` strings, each ended by a NUL) this process's whole environment,
/// leaked for the life of the process. One array handed to the C library, as `execve` would:
/// no `clearenv` and one `putenv` per variable, which grows the array one slot at a time and
/// searches it each time.
fn set_environment(vars: Vec<u8>) {
    let vars: &'static mut [u8] = vars.leak();
    let count = vars.iter().filter(|&&b| b == 0).count();
    let mut array: Vec<*mut libc::c_char> = Vec::with_capacity(count + 1);
    array.extend(
        vars.split_inclusive_mut(|&b| b == 0)
            .map(|var| var.as_mut_ptr().cast::<libc::c_char>()),
    );
    array.push(std::ptr::null_mut());
    let array = array.leak().as_mut_ptr();
    // SAFETY: this process is single-threaded (a fresh fork of the single-threaded server), so
    // nothing reads `environ` while it changes. The array and its strings are null-terminated
    // and leaked, so they live as long as the process; the C library copies the array before it
    // changes it (`setenv` on an array it did not allocate), as after `execve`.
    unsafe { environ = array };
}

/// The forked child: lets go of the server's socket and slot, becomes what the request says,
/// and runs the entry point named by the hello on its control socket, like a re-executed child.
/// Never returns.
fn run_child(
    socket: OwnedFd,
    slot: Option<SharedRegion>,
    request: Request,
    argv: &ArgvArea,
    own_affinity: &[u8],
) -> ! {
    // The server answers for this child. Once the server is gone, end-of-stream on its socket
    // must mean that: no child may hold it.
    drop(socket);
    drop(slot);
    bootstrap::finish(request.apply(argv, own_affinity).and_then(bootstrap::enter))
}

/// The calling thread's CPU affinity mask as bytes (empty when it cannot be read): what a
/// request asks for (the parent's side), and what the server has.
pub(super) fn affinity() -> Vec<u8> {
    // SAFETY: `cpu_set_t` is plain bytes, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the kernel writes at most `size` bytes into `set`, which is that large.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: `set` is `size` initialised bytes, borrowed only for the copy.
    unsafe { std::slice::from_raw_parts((&raw const set).cast::<u8>(), size) }.to_vec()
}

/// The bytes of this process's command line (`/proc/<pid>/stat` fields 48 and 49): what `ps`
/// and `/proc/<pid>/cmdline` show. The server's is [`SERVER_NAME`] padded to [`NAME_ROOM`].
struct ArgvArea {
    start: usize,
    len: usize,
}

impl ArgvArea {
    fn of_self() -> io::Result<ArgvArea> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let (start, end) = stat
            .rfind(')')
            .and_then(|i| {
                // After the command name come fields 3, 4, ...: field 48 is at index 45.
                let mut fields = stat[i + 1..].split_ascii_whitespace().skip(45);
                let start: usize = fields.next()?.parse().ok()?;
                let end: usize = fields.next()?.parse().ok()?;
                Some((start, end))
            })
            .ok_or_else(|| io::Error::other("/proc/self/stat has no command line bounds"))?;
        let len = end.saturating_sub(start);
        let area = ArgvArea { start, len };
        // It must be exactly the server's padded name, which `Server::start` gave it.
        if len != NAME_ROOM || !area.read().starts_with(SERVER_NAME.as_bytes()) {
            return Err(io::Error::other(
                "the command line is not the fork server's",
            ));
        }
        Ok(area)
    }

    fn read(&self) -> &[u8] {
        // SAFETY: `[start, start + len)` is this process's command line, which the kernel placed
        // on the initial stack: mapped, readable and never unmapped.
        unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
    }

    /// Replaces the command line with `name` (shorter than [`NAME_ROOM`]), NUL-padded.
    fn write(&self, name: &[u8]) {
        let n = name.len().min(self.len - 1);
        // SAFETY: the area is this process's own writable command line (see `read`), `len`
        // bytes long; `n < len`. std keeps pointers into it for `env::args` (which then reads
        // the new name) but no reference, and this process is single-threaded.
        unsafe {
            let area = self.start as *mut u8;
            std::ptr::copy_nonoverlapping(name.as_ptr(), area, n);
            std::ptr::write_bytes(area.add(n), 0, self.len - n);
        }
    }
}
