//! Random bytes from the operating system, for wrapping keys p11ha makes and for record ids.
//! Not from a member: a member that is down or slow must not hold up either.

use crate::provider::{Fault, MemberResult};
use cryptoki_sys::CKR_FUNCTION_FAILED;

pub(crate) fn fill_random(buf: &mut [u8]) -> MemberResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
                0,
            )
        };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Fault::Rv(CKR_FUNCTION_FAILED));
        }
        done += n as usize;
    }
    Ok(())
}
