//! Text in the PNG plots. plotters 0.3.7 draws ab_glyph text with each glyph's ink at the pen
//! position, dropping the glyph's left side bearing (`px_bounds().min.x`): a glyph with a
//! wide bearing such as "1" lands too far left and the gap after it grows, so digits look
//! unevenly spaced ("n+ = 1 6"). The SVG is right because the viewer lays its text out.
//! [`TextFix`] wraps a backend and draws text itself, each glyph's outline at its pen
//! position plus bearing (advances and kerning as plotters measures them, so layouts are
//! unchanged); every other call passes through.

use ab_glyph::{Font, FontRef, GlyphId, ScaleFont};
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// `B` with its text drawn in `font` (the one font the plots use).
pub struct TextFix<B> {
    inner: B,
    font: FontRef<'static>,
}

impl<B> TextFix<B> {
    pub fn new(inner: B, font: FontRef<'static>) -> Self {
        TextFix { inner, font }
    }
}

/// Each glyph of `text` at pixel size `size` with its pen x position, and the width of the
/// whole: the advances plus kerning, as plotters measures them.
fn pen_positions(font: &FontRef<'static>, size: f32, text: &str) -> (Vec<(GlyphId, f32)>, f32) {
    let f = font.as_scaled(size);
    let mut glyphs = Vec::with_capacity(text.len());
    let mut pen = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            pen += f.kern(p, id);
        }
        glyphs.push((id, pen));
        pen += f.h_advance(id);
        prev = Some(id);
    }
    (glyphs, pen)
}

/// Drawing calls that [`TextFix`] hands to the wrapped backend unchanged: each becomes
/// `fn name(&mut self, args) -> Result<..> { self.inner.name(args) }`. Forwarded, not left to
/// the trait's defaults: those rasterise through `draw_pixel`, which is not what the wrapped
/// backend draws.
macro_rules! pass_through {
    ($(fn $name:ident $(<$($g:ident: $bound:path),+>)? ($($arg:ident: $ty:ty),*);)+) => {$(
        fn $name $(<$($g: $bound),+>)? (
            &mut self,
            $($arg: $ty),*
        ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.inner.$name($($arg),*)
        }
    )+};
}

impl<B: DrawingBackend> DrawingBackend for TextFix<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    pass_through! {
        fn ensure_prepared();
        fn present();
        fn draw_pixel(point: BackendCoord, color: BackendColor);
        fn draw_line<S: BackendStyle>(from: BackendCoord, to: BackendCoord, style: &S);
        fn draw_rect<S: BackendStyle>(
            upper_left: BackendCoord,
            bottom_right: BackendCoord,
            style: &S,
            fill: bool
        );
        fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(path: I, style: &S);
        fn draw_circle<S: BackendStyle>(center: BackendCoord, radius: u32, style: &S, fill: bool);
        fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(vert: I, style: &S);
        fn blit_bitmap(pos: BackendCoord, size: (u32, u32), src: &[u8]);
    }

    /// plotters' own text drawing (anchor, rotation, the box it measured) with the glyphs
    /// placed at pen position + bearing.
    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let size = style.size() as f32;
        let (glyphs, width) = pen_positions(&self.font, size, text);
        // The box plotters lays out: the advances wide, size / 1.24 high.
        let (w, h) = (width as i32, (size / 1.24) as i32);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -w,
            HPos::Center => -w / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let trans = style.transform();
        let (bw, bh) = self.inner.get_size();
        let scale = self.font.as_scaled(size).scale();
        for (id, pen) in glyphs {
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(pen, 0.0));
            let Some(q) = self.font.outline_glyph(glyph) else {
                continue; // a space
            };
            let r = q.px_bounds();
            // Vertically as plotters places glyphs, so the layout it measured still fits.
            let (x0, y0) = (r.min.x as i32, (size / 2.0 + r.min.y) as i32);
            let mut result = Ok(());
            let inner = &mut self.inner;
            q.draw(|x, y, coverage| {
                if result.is_err() {
                    return;
                }
                let (x, y) = trans.transform(x as i32 + x0 + dx, y as i32 + y0 + dy);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && x < bw as i32 && y >= 0 && y < bh as i32 {
                    let c = BackendColor {
                        alpha: color.alpha * coverage as f64,
                        rgb: color.rgb,
                    };
                    result = inner.draw_pixel((x, y), c);
                }
            });
            result?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;

    static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

    /// The inked columns of a white RGB buffer of width `w`.
    fn ink_columns(buf: &[u8], w: usize) -> Vec<usize> {
        let mut cols: Vec<usize> = buf
            .chunks(3)
            .enumerate()
            .filter(|(_, p)| p.iter().any(|&v| v < 128))
            .map(|(i, _)| i % w)
            .collect();
        cols.sort_unstable();
        cols.dedup();
        cols
    }

    #[test]
    fn glyphs_sit_at_pen_position_plus_bearing() {
        let font = FontRef::try_from_slice(DEJAVU_SANS).unwrap();
        let size = 100.0f32;
        let (w, h) = (300usize, 150usize);
        let mut buf = vec![255u8; w * h * 3];
        {
            let backend = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32));
            let mut b = TextFix::new(backend, font.clone());
            let style = TextStyle::from(("sans-serif", size as f64).into_font()).color(&BLACK);
            b.draw_text("16", &style, (10, 10)).unwrap();
            b.present().unwrap();
        }
        // Where ab_glyph puts each glyph's ink: "1" at pen 0, "6" one advance (+ kerning)
        // later, each shifted by its own bearing.
        let f = font.as_scaled(size);
        let (one, six) = (f.glyph_id('1'), f.glyph_id('6'));
        let ink = |id: ab_glyph::GlyphId, pen: f32| {
            let g = id.with_scale_and_position(size, ab_glyph::point(pen, 0.0));
            font.outline_glyph(g).unwrap().px_bounds()
        };
        let b1 = ink(one, 0.0);
        let b6 = ink(six, f.h_advance(one) + f.kern(one, six));
        assert!(b1.min.x > 5.0, "the '1' of DejaVu Sans has a wide bearing");
        let cols = ink_columns(&buf, w);
        let first = *cols.first().unwrap() as f32 - 10.0;
        assert!(
            (first - b1.min.x).abs() <= 1.0,
            "'1' starts at {first}, not {}",
            b1.min.x
        );
        // The first inked column after the gap between the two glyphs.
        let gap = cols.windows(2).find(|p| p[1] > p[0] + 1).unwrap();
        let second = gap[1] as f32 - 10.0;
        assert!(
            (second - b6.min.x).abs() <= 1.0,
            "'6' starts at {second}, not {}",
            b6.min.x
        );
        let end1 = gap[0] as f32 - 10.0;
        assert!(
            (end1 - b1.max.x).abs() <= 1.5,
            "'1' ends at {end1}, not {}",
            b1.max.x
        );
    }
}
