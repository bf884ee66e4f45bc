//! float8 as the cache stores it: e4m3 ("e4m3fn": no infinities, one NaN pattern per sign,
//! largest finite 448) and e5m2 (IEEE-like, largest finite 57344). These encoders are the
//! definition every backend must match bit for bit.

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;
/// The largest finite e5m2 value.
pub const E5M2_MAX: f32 = 57344.0;

/// The two float8 formats a cache can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    E4m3,
    E5m2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::E4m3 => "e4m3",
            Format::E5m2 => "e5m2",
        }
    }

    /// Encodes `x` (see [`e4m3_from_f32`] and [`e5m2_from_f32`]).
    pub fn encode(self, x: f32) -> u8 {
        match self {
            Format::E4m3 => e4m3_from_f32(x),
            Format::E5m2 => e5m2_from_f32(x),
        }
    }

    /// Decodes a byte of this format to f32 (exact).
    pub fn decode(self, byte: u8) -> f32 {
        match self {
            Format::E4m3 => e4m3_to_f32(byte),
            Format::E5m2 => e5m2_to_f32(byte),
        }
    }

    /// The largest finite value, where finite inputs and infinities saturate.
    pub fn max(self) -> f32 {
        match self {
            Format::E4m3 => E4M3_MAX,
            Format::E5m2 => E5M2_MAX,
        }
    }

    /// The cache value of one input element: `x / scale` in f32, then encoded; a NaN quotient
    /// is `0x7f` with the sign [`quantize`] gives it, in both formats.
    pub fn quantize(self, x: f32, scale: f32) -> u8 {
        let quotient = x / scale;
        if quotient.is_nan() {
            return if nan_quotient_is_negative(x, scale) {
                0xff
            } else {
                0x7f
            };
        }
        self.encode(quotient)
    }
}

/// Encodes `x` as e4m3: round to nearest, ties to even; finite values and infinities beyond
/// +-448 saturate to +-448 (`0x7e` / `0xfe`); NaN stays NaN (`0x7f`, with the input's sign bit).
///
/// These are the semantics of CUDA's `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)`.
pub fn e4m3_from_f32(x: f32) -> u8 {
    // 448.0 and above (infinity too) saturate; below 448 rounding never reaches 0x7f.
    encode(x, 3, 7, 0x43e0_0000, 0x7e)
}

/// Encodes `x` with `mantissa_bits` mantissa bits and exponent bias `bias`: NaN gives `0x7f`
/// with the input's sign bit; magnitudes of at least `max_bits` (an f32's bits: the format's
/// largest finite value, whose code is `max_code`) and infinities saturate to it; the rest
/// round to nearest, ties to even.
fn encode(x: f32, mantissa_bits: u32, bias: u32, max_bits: u32, max_code: u8) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let magnitude = bits & 0x7fff_ffff;
    if magnitude > 0x7f80_0000 {
        return sign | 0x7f;
    }
    if magnitude >= max_bits {
        return sign | max_code;
    }
    // Below the smallest normal, 2^(1 - bias), the result is a subnormal (a multiple of
    // 2^(1 - bias - mantissa_bits)) or zero. Scaling by the inverse of that step is exact, so
    // rounding the scaled value to an integer is the format's rounding.
    if magnitude < (128 - bias) << 23 {
        let step = (bias - 1 + mantissa_bits + 127) << 23;
        let scaled = f32::from_bits(magnitude) * f32::from_bits(step);
        return sign | scaled.round_ties_even() as u8;
    }
    // Normal: rebias the exponent (127 -> bias) and keep `mantissa_bits` of the 23 mantissa
    // bits, rounding the dropped bits to nearest even. A carry out of the mantissa correctly
    // bumps the exponent.
    let dropped_bits = 23 - mantissa_bits;
    let exponent = (magnitude >> 23) + bias - 127;
    let mantissa = magnitude & 0x7f_ffff;
    let mut encoded = (exponent << mantissa_bits) | (mantissa >> dropped_bits);
    let dropped = mantissa & ((1 << dropped_bits) - 1);
    let half = 1 << (dropped_bits - 1);
    if dropped > half || (dropped == half && encoded & 1 == 1) {
        encoded += 1;
    }
    sign | encoded as u8
}

/// Decodes an e4m3 byte to f32 (exact).
pub fn e4m3_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((byte >> 3) & 0xf) as i32;
    let mantissa = (byte & 0x7) as f32;
    if byte & 0x7f == 0x7f {
        return f32::NAN;
    }
    if exponent == 0 {
        sign * mantissa * (2.0f32).powi(-9)
    } else {
        sign * (1.0 + mantissa / 8.0) * (2.0f32).powi(exponent - 7)
    }
}

/// Encodes `x` as e5m2: round to nearest, ties to even; finite values and infinities beyond
/// +-57344 saturate to +-57344 (`0x7b` / `0xfb`); NaN gives `0x7f` with the input's sign bit.
///
/// These are the semantics of CUDA's `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2)`,
/// except that CUDA keeps part of a NaN's payload (`0x7e` or `0x7f`): one NaN code per sign
/// keeps every backend's NaN comparable byte for byte, as e4m3 has only one.
pub fn e5m2_from_f32(x: f32) -> u8 {
    // 57344.0 and above (infinity too) saturate; below it rounding never passes 0x7b.
    encode(x, 2, 15, 0x4760_0000, 0x7b)
}

/// Decodes an e5m2 byte to f32 (exact; `0x7c` is infinity, above it NaN).
pub fn e5m2_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((byte >> 2) & 0x1f) as i32;
    let mantissa = (byte & 0x3) as f32;
    if exponent == 0x1f {
        return if mantissa == 0.0 {
            sign * f32::INFINITY
        } else {
            f32::NAN
        };
    }
    if exponent == 0 {
        sign * mantissa * (2.0f32).powi(-16)
    } else {
        sign * (1.0 + mantissa / 4.0) * (2.0f32).powi(exponent - 15)
    }
}

/// The e4m3 cache value of one input element: `x / scale` in f32, then encoded.
///
/// A NaN quotient's sign is fixed here rather than left to the processor (x86 and Arm differ):
/// a NaN input keeps its sign, a NaN scale gives its sign, and an invalid division (0 / 0,
/// inf / inf) gives a negative NaN, as x86's "default NaN" is.
pub fn quantize(x: f32, scale: f32) -> u8 {
    Format::E4m3.quantize(x, scale)
}

/// The e5m2 cache value of one input element, with [`quantize`]'s rules for a NaN quotient.
pub fn quantize_e5m2(x: f32, scale: f32) -> u8 {
    Format::E5m2.quantize(x, scale)
}

/// The sign of the NaN that `x / scale` gives (when it gives one), as an x86 host computes it.
fn nan_quotient_is_negative(x: f32, scale: f32) -> bool {
    if x.is_nan() {
        x.is_sign_negative()
    } else if scale.is_nan() {
        scale.is_sign_negative()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        assert_eq!(e4m3_from_f32(0.0), 0x00);
        assert_eq!(e4m3_from_f32(-0.0), 0x80);
        assert_eq!(e4m3_from_f32(1.0), 0x38);
        assert_eq!(e4m3_from_f32(-2.0), 0xc0);
        assert_eq!(e4m3_from_f32(448.0), 0x7e);
        assert_eq!(e4m3_from_f32(1000.0), 0x7e);
        assert_eq!(e4m3_from_f32(-1.0e30), 0xfe);
        assert_eq!(e4m3_from_f32(f32::INFINITY), 0x7e);
        assert_eq!(e4m3_from_f32(f32::NEG_INFINITY), 0xfe);
        assert_eq!(e4m3_from_f32(f32::NAN), 0x7f);
        assert_eq!(e4m3_from_f32(-f32::NAN), 0xff);
        // Ties to even: 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39): even wins.
        assert_eq!(e4m3_from_f32(1.0625), 0x38);
        // 1.1875 is halfway between 1.125 (0x39) and 1.25 (0x3a): even wins.
        assert_eq!(e4m3_from_f32(1.1875), 0x3a);
        // Just above the tie rounds up.
        assert_eq!(e4m3_from_f32(f32::from_bits(1.0625f32.to_bits() + 1)), 0x39);
        // Subnormals: the smallest is 2^-9; half of it ties to zero (even), a bit more rounds up.
        assert_eq!(e4m3_from_f32(2.0f32.powi(-9)), 0x01);
        assert_eq!(e4m3_from_f32(2.0f32.powi(-10)), 0x00);
        assert_eq!(e4m3_from_f32(1.5 * 2.0f32.powi(-10)), 0x01);
        assert_eq!(e4m3_from_f32(3.0 * 2.0f32.powi(-10)), 0x02);
        // 7.5 * 2^-9 is a tie between the largest subnormal (7) and the smallest normal (8).
        assert_eq!(e4m3_from_f32(7.5 * 2.0f32.powi(-9)), 0x08);
        assert_eq!(e4m3_from_f32(2.0f32.powi(-6)), 0x08);
        // Largest value below the saturation threshold rounds within range.
        assert_eq!(e4m3_from_f32(447.0), 0x7e);
        assert_eq!(e4m3_from_f32(415.0), 0x7d);
    }

    #[test]
    fn nan_quotients_have_a_fixed_sign() {
        assert_eq!(quantize(f32::NAN, 2.0), 0x7f);
        assert_eq!(quantize(-f32::NAN, 2.0), 0xff);
        assert_eq!(quantize(-f32::NAN, -f32::NAN), 0xff);
        assert_eq!(quantize(1.0, f32::NAN), 0x7f);
        assert_eq!(quantize(1.0, -f32::NAN), 0xff);
        assert_eq!(quantize(0.0, 0.0), 0xff);
        assert_eq!(quantize(f32::INFINITY, f32::NEG_INFINITY), 0xff);
        assert_eq!(quantize(1.0, 0.0), 0x7e);
    }

    #[test]
    fn e5m2_hand_computed_values() {
        assert_eq!(e5m2_from_f32(0.0), 0x00);
        assert_eq!(e5m2_from_f32(-0.0), 0x80);
        assert_eq!(e5m2_from_f32(1.0), 0x3c);
        assert_eq!(e5m2_from_f32(-2.0), 0xc0);
        assert_eq!(e5m2_from_f32(1.5), 0x3e);
        assert_eq!(e5m2_from_f32(57344.0), 0x7b);
        assert_eq!(e5m2_from_f32(1.0e6), 0x7b);
        assert_eq!(e5m2_from_f32(-1.0e30), 0xfb);
        assert_eq!(e5m2_from_f32(f32::INFINITY), 0x7b);
        assert_eq!(e5m2_from_f32(f32::NEG_INFINITY), 0xfb);
        assert_eq!(e5m2_from_f32(f32::NAN), 0x7f);
        assert_eq!(e5m2_from_f32(-f32::NAN), 0xff);
        // 1.125 is halfway between 1.0 (0x3c) and 1.25 (0x3d): even wins; 1.375 goes up.
        assert_eq!(e5m2_from_f32(1.125), 0x3c);
        assert_eq!(e5m2_from_f32(1.375), 0x3e);
        assert_eq!(e5m2_from_f32(f32::from_bits(1.125f32.to_bits() + 1)), 0x3d);
        // Subnormals: multiples of 2^-16; half of the smallest ties to zero.
        assert_eq!(e5m2_from_f32(2.0f32.powi(-16)), 0x01);
        assert_eq!(e5m2_from_f32(2.0f32.powi(-17)), 0x00);
        assert_eq!(e5m2_from_f32(3.0 * 2.0f32.powi(-17)), 0x02);
        // 3.5 * 2^-16 ties between the largest subnormal (3) and the smallest normal (4).
        assert_eq!(e5m2_from_f32(3.5 * 2.0f32.powi(-16)), 0x04);
        assert_eq!(e5m2_from_f32(2.0f32.powi(-14)), 0x04);
        // Just below the saturation threshold rounds to the largest finite value.
        assert_eq!(e5m2_from_f32(57000.0), 0x7b);
        assert_eq!(e5m2_from_f32(45056.0), 0x7a);
        // A quotient: 3 / 0.5 = 6 = 1.5 * 2^2.
        assert_eq!(quantize_e5m2(3.0, 0.5), 0x46);
        assert_eq!(quantize_e5m2(0.0, 0.0), 0xff);
        assert_eq!(quantize_e5m2(1.0, -f32::NAN), 0xff);
        assert_eq!(quantize_e5m2(-1.0, 0.0), 0xfb);
    }

    #[test]
    fn e5m2_decode_inverts_encode_on_every_finite_byte() {
        for byte in 0..=255u8 {
            let exponent = (byte >> 2) & 0x1f;
            if exponent == 0x1f {
                assert_eq!(e5m2_to_f32(byte).is_nan(), byte & 3 != 0);
                continue;
            }
            assert_eq!(e5m2_from_f32(e5m2_to_f32(byte)), byte, "byte {byte:#04x}");
        }
    }

    #[test]
    fn decode_inverts_encode_on_every_byte() {
        for byte in 0..=255u8 {
            if byte & 0x7f == 0x7f {
                assert!(e4m3_to_f32(byte).is_nan());
                continue;
            }
            assert_eq!(e4m3_from_f32(e4m3_to_f32(byte)), byte, "byte {byte:#04x}");
        }
    }
}
