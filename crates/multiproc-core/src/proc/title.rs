//! The name a process shows in `ps` and `/proc/<pid>/comm`.

use std::io;

/// Sets this process's name as the kernel shows it (`/proc/self/comm`, `ps`'s default
/// column): the first 15 bytes of `name`, NUL bytes dropped. Names the calling thread, so
/// call it from the main thread.
///
/// # Errors
/// When the kernel refuses.
///
/// # References
/// - [`PR_SET_NAME` in `prctl(2)`](https://man7.org/linux/man-pages/man2/PR_SET_NAME.2const.html)
pub fn set_process_name(name: &str) -> io::Result<()> {
    let mut clean: String = name.chars().filter(|&c| c != '\0').collect();
    let mut cut = clean.len().min(15);
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    clean.truncate(cut);
    let name = std::ffi::CString::new(clean).expect("NUL bytes were dropped");
    rustix::thread::set_name(&name)?;
    Ok(())
}
