//! libjpeg-turbo for the GPU tests: 4:2:0 JPEGs (the `image` encoder writes 4:4:4 only;
//! ImageNet is mostly 4:2:0) and libjpeg-turbo's own decode of them, the CPU path's decoder,
//! with its default interpolated ("fancy") chroma upsampling.

use std::ffi::c_int;

use turbojpeg_sys as tj;

/// Chroma subsampling of an encoded test JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    /// 4:4:4.
    Full,
    /// 4:2:0: chroma at half width and half height.
    Half,
}

/// A libjpeg-turbo handle of one kind, destroyed on drop.
struct Handle(tj::tjhandle);

impl Handle {
    fn new(kind: tj::TJINIT) -> Self {
        // SAFETY: tj3Init has no preconditions; a null result is checked.
        let h = unsafe { tj::tj3Init(kind as c_int) };
        assert!(!h.is_null(), "tj3Init failed");
        Handle(h)
    }

    fn set(&self, param: tj::TJPARAM, value: c_int) {
        // SAFETY: live handle; an invalid parameter is reported by the return value.
        assert_eq!(unsafe { tj::tj3Set(self.0, param as c_int, value) }, 0);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle is live and destroyed once, here.
        unsafe { tj::tj3Destroy(self.0) };
    }
}

/// RGB `pixels` (`w × h`) as a quality-95 baseline JPEG with `chroma` subsampling.
pub fn tj_encode(pixels: &[u8], w: u32, h: u32, chroma: Chroma) -> Vec<u8> {
    assert_eq!(pixels.len(), w as usize * h as usize * 3);
    let c = Handle::new(tj::TJINIT_TJINIT_COMPRESS);
    c.set(tj::TJPARAM_TJPARAM_QUALITY, 95);
    let samp = match chroma {
        Chroma::Full => tj::TJSAMP_TJSAMP_444,
        Chroma::Half => tj::TJSAMP_TJSAMP_420,
    };
    c.set(tj::TJPARAM_TJPARAM_SUBSAMP, samp);
    let mut buf: *mut u8 = std::ptr::null_mut();
    let mut size: tj::size_t = 0;
    // SAFETY: `pixels` holds `h` rows of `3w` bytes (asserted); libjpeg-turbo allocates the
    // output, which is copied and then freed with tj3Free.
    unsafe {
        let rc = tj::tj3Compress8(
            c.0,
            pixels.as_ptr(),
            w as c_int,
            (w * 3) as c_int,
            h as c_int,
            tj::TJPF_TJPF_RGB,
            &mut buf,
            &mut size,
        );
        assert_eq!(rc, 0, "tj3Compress8 failed");
        let out = std::slice::from_raw_parts(buf, size as usize).to_vec();
        tj::tj3Free(buf.cast());
        out
    }
}

/// libjpeg-turbo's decode of `data` to RGB: (pixels, width, height).
pub fn tj_decode(data: &[u8]) -> (Vec<u8>, u32, u32) {
    let d = Handle::new(tj::TJINIT_TJINIT_DECOMPRESS);
    // SAFETY: live handle; `data` is readable for its length.
    let rc = unsafe { tj::tj3DecompressHeader(d.0, data.as_ptr(), data.len() as tj::size_t) };
    assert_eq!(rc, 0, "tj3DecompressHeader failed");
    // SAFETY: live handle after a successful header read.
    let (w, h) = unsafe {
        (
            tj::tj3Get(d.0, tj::TJPARAM_TJPARAM_JPEGWIDTH as c_int),
            tj::tj3Get(d.0, tj::TJPARAM_TJPARAM_JPEGHEIGHT as c_int),
        )
    };
    let (w, h) = (u32::try_from(w).unwrap(), u32::try_from(h).unwrap());
    let mut out = vec![0u8; w as usize * h as usize * 3];
    // SAFETY: `out` holds `h` rows of `3w` bytes, the pitch passed.
    let rc = unsafe {
        tj::tj3Decompress8(
            d.0,
            data.as_ptr(),
            data.len() as tj::size_t,
            out.as_mut_ptr(),
            (w * 3) as c_int,
            tj::TJPF_TJPF_RGB,
        )
    };
    assert_eq!(rc, 0, "tj3Decompress8 failed");
    (out, w, h)
}
