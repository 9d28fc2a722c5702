//! Pixel rectangles and crop boxes.
//!
//! Source coordinates are continuous: pixel `i` spans `[i, i+1)`. A [`CropBox`] may have
//! fractional edges (the validation crop of a resized image does); a [`Rect`] is whole pixels.

/// An integer pixel rectangle: columns `x..x + w`, rows `y..y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

/// A crop in continuous source coordinates (pixel `i` spans `[i, i+1)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left.
    pub x0: f64,
    /// Top.
    pub y0: f64,
    /// Right.
    pub x1: f64,
    /// Bottom.
    pub y1: f64,
}

impl From<[f64; 4]> for CropBox {
    /// `[x0, y0, x1, y1]`.
    fn from([x0, y0, x1, y1]: [f64; 4]) -> Self {
        CropBox { x0, y0, x1, y1 }
    }
}

impl CropBox {
    /// The box covering the whole of `r`.
    pub fn from_rect(r: Rect) -> Self {
        CropBox {
            x0: f64::from(r.x),
            y0: f64::from(r.y),
            x1: f64::from(r.x) + f64::from(r.w),
            y1: f64::from(r.y) + f64::from(r.h),
        }
    }

    /// The smallest pixel rectangle holding the box, inside a `width × height` image.
    pub fn bounding_rect(&self, width: u32, height: u32) -> Rect {
        let x0 = (self.x0.floor().max(0.0) as u32).min(width.saturating_sub(1));
        let y0 = (self.y0.floor().max(0.0) as u32).min(height.saturating_sub(1));
        let x1 = (self.x1.ceil() as u32).clamp(x0 + 1, width.max(x0 + 1));
        let y1 = (self.y1.ceil() as u32).clamp(y0 + 1, height.max(y0 + 1));
        Rect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }

    /// `x1 − x0`.
    pub fn width(&self) -> f64 {
        self.x1 - self.x0
    }

    /// `y1 − y0`.
    pub fn height(&self) -> f64 {
        self.y1 - self.y0
    }

    /// Finite (and well inside f64's exact range), with `x0 < x1` and `y0 < y1`.
    pub fn is_valid(&self) -> bool {
        [self.x0, self.y0, self.x1, self.y1]
            .iter()
            .all(|v| v.is_finite() && v.abs() < 1e9)
            && self.x1 > self.x0
            && self.y1 > self.y0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rects_and_boxes_round_trip() {
        let r = Rect {
            x: 3,
            y: 4,
            w: 10,
            h: 20,
        };
        let b = CropBox::from_rect(r);
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (3.0, 4.0, 13.0, 24.0));
        assert_eq!((b.width(), b.height()), (10.0, 20.0));
        assert_eq!(b.bounding_rect(100, 100), r);
        assert!(b.is_valid());
    }

    fn rect([x, y, w, h]: [u32; 4]) -> Rect {
        Rect { x, y, w, h }
    }

    #[test]
    fn bounding_rect_widens_to_whole_pixels_and_stays_inside() {
        let b = CropBox::from([2.5, 0.25, 7.1, 9.0]);
        assert_eq!(b.bounding_rect(100, 100), rect([2, 0, 6, 9]));
        // Clipped to the image, never empty.
        let past = CropBox::from([-3.0, 95.0, 200.0, 300.0]);
        assert_eq!(past.bounding_rect(100, 100), rect([0, 95, 100, 5]));
        let outside = CropBox::from([150.0, 150.0, 160.0, 160.0]);
        let r = outside.bounding_rect(100, 100);
        assert!(
            r.w >= 1 && r.h >= 1 && r.x + r.w <= 100 && r.y + r.h <= 100,
            "{r:?}"
        );
    }

    #[test]
    fn invalid_boxes_are_recognized() {
        let ok = CropBox {
            x0: 0.0,
            y0: 0.0,
            x1: 1.0,
            y1: 1.0,
        };
        assert!(!CropBox { x1: 0.0, ..ok }.is_valid());
        assert!(!CropBox { y0: 2.0, ..ok }.is_valid());
        assert!(!CropBox { x0: f64::NAN, ..ok }.is_valid());
        assert!(
            !CropBox {
                y1: f64::INFINITY,
                ..ok
            }
            .is_valid()
        );
        assert!(!CropBox { x1: 1e10, ..ok }.is_valid());
    }
}
