//! Is a provider library a PKCS#11 module, and not p11ha itself? Checked by loading it, as
//! p11ha does right after validation anyway: it must load (all its symbols resolved) and export
//! `C_GetFunctionList`. Nothing in it is called: its initializers run, C_GetFunctionList and
//! C_Initialize do not.
//!
//! p11ha as its own member would call itself from inside C_Initialize. It is recognised whatever
//! the path (a symlink, a hard link, a copy, another build): the loaded `C_GetFunctionList` is in
//! the object that holds this code, or the library exports [`P11HA_SYMBOL`], which only p11ha does.

use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::echo::plain;

/// A function only p11ha exports (its C status API, `include/p11ha.h`).
pub const P11HA_SYMBOL: &str = "p11ha_group_status";

struct Handle(*mut c_void);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle from dlopen, closed once. RTLD_NODELETE keeps the code mapped, so an
        // initializer that started a thread cannot have the code unmapped under it.
        unsafe { libc::dlclose(self.0) };
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl call on
    // this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn symbol(h: &Handle, name: &str) -> Option<*mut c_void> {
    let name = CString::new(name).ok()?;
    // SAFETY: a live handle and a NUL-terminated name; the address is only compared, not called.
    let p = unsafe { libc::dlsym(h.0, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Base address of the loaded object that contains `addr`.
fn object_of(addr: *const c_void) -> Option<*mut c_void> {
    // SAFETY: dladdr only reads the loader's tables; `info` is a properly sized out-parameter.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    (unsafe { libc::dladdr(addr, &mut info) } != 0).then_some(info.dli_fbase)
}

/// `Ok` when `path` is a loadable PKCS#11 module other than p11ha; else why not (one line).
pub(crate) fn check(path: &Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "the path contains a NUL byte".to_string())?;
    // SAFETY: loading a PKCS#11 module runs its initializers; that is what the user configured
    // and what the provider loader does next. RTLD_LOCAL: its symbols do not leak into others.
    let h = unsafe {
        libc::dlopen(
            c.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE,
        )
    };
    if h.is_null() {
        return Err(format!(
            "cannot load it as a shared library: {}",
            plain(&dlerror())
        ));
    }
    let h = Handle(h);
    let Some(get) = symbol(&h, "C_GetFunctionList") else {
        return Err("it does not export C_GetFunctionList: it is not a PKCS#11 module".to_string());
    };
    let this = object_of(check as *const c_void);
    if (this.is_some() && object_of(get) == this) || symbol(&h, P11HA_SYMBOL).is_some() {
        return Err(
            "it is p11ha itself (libp11ha.so, or a copy or link of it): a member module must \
             be the PKCS#11 module of a real token (SoftHSM, p11-kit-client, an HSM's library)"
                .to_string(),
        );
    }
    Ok(())
}
