//! EDID 1.4 base blocks for the scanouts' modes.
//!
//! One 128-byte block per scanout: a detailed timing descriptor for the mode (CVT reduced
//! blanking, 60 Hz, or lower where the pixel clock field would overflow), a range-limits
//! descriptor, the monitor name and a serial number; checksum last.

/// Largest width or height a detailed timing descriptor can carry (12 bits).
pub const MAX_EDID_DIMENSION: u32 = 4095;

const HBLANK: u32 = 160;
const HFRONT: u32 = 48;
const HSYNC: u32 = 32;
const VFRONT: u32 = 3;
const VSYNC: u32 = 6;
const VBLANK: u32 = 40;

/// Refresh rate the descriptor uses for a `width` x `height` mode.
pub fn refresh_hz(width: u32, height: u32) -> u32 {
    let total = (u64::from(width) + u64::from(HBLANK)) * (u64::from(height) + u64::from(VBLANK));
    // The pixel clock field is 16 bits of 10 kHz.
    let max_clock = 65_535u64 * 10_000;
    (max_clock / total.max(1)).clamp(1, 60) as u32
}

fn put_name(block: &mut [u8], tag: u8, text: &str) {
    block[3] = tag;
    let bytes = text.as_bytes();
    for (i, slot) in block[5..18].iter_mut().enumerate() {
        *slot = match i.cmp(&bytes.len()) {
            std::cmp::Ordering::Less => bytes[i],
            std::cmp::Ordering::Equal => b'\n',
            std::cmp::Ordering::Greater => b' ',
        };
    }
}

/// Builds the EDID for one scanout. `width`/`height` are clamped to 1..=[`MAX_EDID_DIMENSION`]
/// (the CLI refuses larger modes, so this only guards the arithmetic).
pub fn generate(scanout: u32, width: u32, height: u32) -> [u8; 128] {
    let w = width.clamp(1, MAX_EDID_DIMENSION);
    let h = height.clamp(1, MAX_EDID_DIMENSION);
    let mut e = [0u8; 128];
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "VHG", packed 5 bits a letter, big-endian.
    let id =
        ((u16::from(b'V' - b'@')) << 10) | ((u16::from(b'H' - b'@')) << 5) | u16::from(b'G' - b'@');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&0x1234u16.to_le_bytes()); // product code
    e[12..16].copy_from_slice(&(scanout + 1).to_le_bytes()); // serial
    e[16] = 1; // week
    e[17] = (2026 - 1990) as u8; // year
    e[18] = 1; // EDID 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital, 8 bits per colour, DisplayPort
                  // Physical size in cm at 96 dpi (EDID stores cm; 1 in = 2.54 cm).
    let w_mm = u64::from(w) * 254 / 960;
    let h_mm = u64::from(h) * 254 / 960;
    e[21] = (w_mm / 10).clamp(1, 255) as u8;
    e[22] = (h_mm / 10).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB default, preferred timing is native
                  // sRGB chromaticity.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    // No established timings; standard timings unused.
    for i in 0..8 {
        e[38 + i * 2] = 0x01;
        e[39 + i * 2] = 0x01;
    }

    // Detailed timing descriptor.
    let hz = refresh_hz(w, h);
    let htotal = w + HBLANK;
    let vtotal = h + VBLANK;
    let clock_10khz = (u64::from(htotal) * u64::from(vtotal) * u64::from(hz) / 10_000) as u16;
    let d = &mut e[54..72];
    d[0..2].copy_from_slice(&clock_10khz.to_le_bytes());
    d[2] = (w & 0xff) as u8;
    d[3] = (HBLANK & 0xff) as u8;
    d[4] = (((w >> 8) & 0xf) << 4 | ((HBLANK >> 8) & 0xf)) as u8;
    d[5] = (h & 0xff) as u8;
    d[6] = (VBLANK & 0xff) as u8;
    d[7] = (((h >> 8) & 0xf) << 4 | ((VBLANK >> 8) & 0xf)) as u8;
    d[8] = (HFRONT & 0xff) as u8;
    d[9] = (HSYNC & 0xff) as u8;
    d[10] = (((VFRONT & 0xf) << 4) | (VSYNC & 0xf)) as u8;
    d[11] = 0;
    d[12] = (w_mm & 0xff) as u8;
    d[13] = (h_mm & 0xff) as u8;
    d[14] = ((((w_mm >> 8) & 0xf) << 4) | ((h_mm >> 8) & 0xf)) as u8;
    d[17] = 0x1a; // digital separate sync, +h -v

    // Range limits: 1..60 Hz vertical, 1..255 kHz horizontal, max clock 660 MHz.
    let r = &mut e[72..90];
    r[3] = 0xfd;
    r[5] = 1;
    r[6] = 60;
    r[7] = 1;
    r[8] = 255;
    r[9] = 66;
    r[10] = 0x01; // range limits only
    r[11] = b'\n';
    for b in &mut r[12..18] {
        *b = b' ';
    }
    put_name(&mut e[90..108], 0xfc, "vhost-gpu");
    let serial = format!("VHG-{scanout}");
    put_name(&mut e[108..126], 0xff, &serial);

    e[126] = 0; // no extensions
    let sum = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_and_mode() {
        let e = generate(0, 1920, 1080);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&e[0..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        let hactive = u32::from(e[56]) | (u32::from(e[58] >> 4) << 8);
        let vactive = u32::from(e[59]) | (u32::from(e[61] >> 4) << 8);
        assert_eq!((hactive, vactive), (1920, 1080));
    }

    #[test]
    fn huge_modes_lower_the_refresh_not_overflow() {
        let e = generate(15, 4095, 4095);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert!(refresh_hz(4095, 4095) < 60);
        assert_eq!(refresh_hz(1280, 800), 60);
    }
}
