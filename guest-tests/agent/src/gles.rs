//! The few OpenGL ES 2.0 entry points the agent draws with, from the guest's libGLESv2
//! (Mesa's, through libglvnd).

use std::ffi::{c_char, c_void, CStr, CString};

pub type GLenum = u32;
pub type GLuint = u32;
pub type GLint = i32;
pub type GLsizei = i32;
pub type GLfloat = f32;

pub const COLOR_BUFFER_BIT: u32 = 0x4000;
pub const SCISSOR_TEST: GLenum = 0x0C11;
pub const RGBA: GLenum = 0x1908;
pub const UNSIGNED_BYTE: GLenum = 0x1401;
pub const FLOAT: GLenum = 0x1406;
pub const TRIANGLES: GLenum = 0x0004;
pub const VERTEX_SHADER: GLenum = 0x8B31;
pub const FRAGMENT_SHADER: GLenum = 0x8B30;
pub const COMPILE_STATUS: GLenum = 0x8B81;
pub const LINK_STATUS: GLenum = 0x8B82;
pub const VENDOR: GLenum = 0x1F00;
pub const RENDERER: GLenum = 0x1F01;
pub const VERSION: GLenum = 0x1F02;

#[link(name = "GLESv2")]
extern "C" {
    fn glGetString(name: GLenum) -> *const u8;
    pub fn glClearColor(r: GLfloat, g: GLfloat, b: GLfloat, a: GLfloat);
    pub fn glClear(mask: u32);
    pub fn glEnable(cap: GLenum);
    pub fn glDisable(cap: GLenum);
    pub fn glScissor(x: GLint, y: GLint, w: GLsizei, h: GLsizei);
    pub fn glViewport(x: GLint, y: GLint, w: GLsizei, h: GLsizei);
    fn glReadPixels(
        x: GLint,
        y: GLint,
        w: GLsizei,
        h: GLsizei,
        format: GLenum,
        ty: GLenum,
        data: *mut c_void,
    );
    fn glCreateShader(ty: GLenum) -> GLuint;
    fn glShaderSource(s: GLuint, n: GLsizei, src: *const *const c_char, len: *const GLint);
    fn glCompileShader(s: GLuint);
    fn glGetShaderiv(s: GLuint, pname: GLenum, out: *mut GLint);
    fn glCreateProgram() -> GLuint;
    fn glAttachShader(p: GLuint, s: GLuint);
    fn glBindAttribLocation(p: GLuint, index: GLuint, name: *const c_char);
    fn glLinkProgram(p: GLuint);
    fn glGetProgramiv(p: GLuint, pname: GLenum, out: *mut GLint);
    pub fn glUseProgram(p: GLuint);
    fn glGetUniformLocation(p: GLuint, name: *const c_char) -> GLint;
    pub fn glUniform4f(loc: GLint, a: GLfloat, b: GLfloat, c: GLfloat, d: GLfloat);
    fn glVertexAttribPointer(
        index: GLuint,
        size: GLint,
        ty: GLenum,
        normalized: u8,
        stride: GLsizei,
        ptr: *const c_void,
    );
    pub fn glEnableVertexAttribArray(index: GLuint);
    pub fn glDrawArrays(mode: GLenum, first: GLint, count: GLsizei);
}

/// `glGetString`, as text ("" when the driver gives none).
pub fn string(name: GLenum) -> String {
    // SAFETY: glGetString returns null or a static NUL-terminated string owned by the driver;
    // a context is current whenever the agent calls this.
    let p = unsafe { glGetString(name) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, lives as long as the context (we copy it at once).
    unsafe { CStr::from_ptr(p.cast()) }
        .to_string_lossy()
        .into_owned()
}

/// Reads one RGBA pixel at GL coordinates (origin bottom-left).
pub fn read_pixel(x: i32, y: i32) -> [u8; 4] {
    let mut px = [0u8; 4];
    // SAFETY: a 1x1 RGBA/UNSIGNED_BYTE read writes exactly 4 bytes into `px`.
    unsafe { glReadPixels(x, y, 1, 1, RGBA, UNSIGNED_BYTE, px.as_mut_ptr().cast()) };
    px
}

fn shader(ty: GLenum, src: &str) -> Result<GLuint, String> {
    let c = CString::new(src).map_err(|e| e.to_string())?;
    let ptr = c.as_ptr();
    let mut ok = 0;
    // SAFETY: `ptr` is a NUL-terminated source string alive across these calls; a null length
    // array means NUL-terminated; `ok` is a local the driver writes one GLint to.
    unsafe {
        let s = glCreateShader(ty);
        glShaderSource(s, 1, &ptr, std::ptr::null());
        glCompileShader(s);
        glGetShaderiv(s, COMPILE_STATUS, &mut ok);
        if ok == 0 {
            return Err(format!("shader type {ty:#x} did not compile"));
        }
        Ok(s)
    }
}

/// A program that draws attribute 0 (vec2 positions) in the uniform colour `color`; returns
/// the program and the colour's location.
pub fn solid_program() -> Result<(GLuint, GLint), String> {
    let vs = shader(
        VERTEX_SHADER,
        "attribute vec2 pos; void main() { gl_Position = vec4(pos, 0.0, 1.0); }",
    )?;
    let fs = shader(
        FRAGMENT_SHADER,
        "precision mediump float; uniform vec4 color; void main() { gl_FragColor = color; }",
    )?;
    let pos = CString::new("pos").map_err(|e| e.to_string())?;
    let color = CString::new("color").map_err(|e| e.to_string())?;
    let mut ok = 0;
    // SAFETY: shader ids come from shader() above; the names are NUL-terminated and alive;
    // `ok` is a local the driver writes one GLint to.
    unsafe {
        let p = glCreateProgram();
        glAttachShader(p, vs);
        glAttachShader(p, fs);
        glBindAttribLocation(p, 0, pos.as_ptr());
        glLinkProgram(p);
        glGetProgramiv(p, LINK_STATUS, &mut ok);
        if ok == 0 {
            return Err("program did not link".into());
        }
        Ok((p, glGetUniformLocation(p, color.as_ptr())))
    }
}

/// Draws two triangles from `verts` (x, y pairs in clip space) with the bound program.
pub fn draw_triangles(verts: &[f32]) {
    // SAFETY: client-side vertex array: `verts` outlives the draw call, which reads
    // verts.len() / 2 vec2s from it (count passed accordingly).
    unsafe {
        glVertexAttribPointer(0, 2, FLOAT, 0, 0, verts.as_ptr().cast());
        glEnableVertexAttribArray(0);
        glDrawArrays(TRIANGLES, 0, (verts.len() / 2) as GLsizei);
    }
}
