//! The `frames`-table row of a dataset frame: the one place where a dataset's frame geometry (pixel counts as
//! `usize`) becomes the table's provenance columns (`u32`).

use mrdino_datasets::image::Geometry;
use mrdino_outputs::provenance::FrameGeometry;
use mrdino_outputs::tables::{FrameId, FrameRow};

/// The provenance columns of a frame with geometry `g`.
pub fn frame_geometry(g: &Geometry) -> FrameGeometry {
    FrameGeometry {
        height: g.height as u32,
        width: g.width as u32,
        orig_height: g.orig_height as u32,
        orig_width: g.orig_width as u32,
        resized_height: g.resized_height as u32,
        resized_width: g.resized_width as u32,
        crop_top: g.crop_top as u32,
        crop_left: g.crop_left as u32,
    }
}

/// [`FrameRow::new`] of frame `id` with the dataset geometry `g`.
pub fn frame_row(id: FrameId, g: &Geometry) -> FrameRow {
    FrameRow::new(id, frame_geometry(g))
}

/// The row of frame 0 (`s/000000.png`) of sequence `s` of a `frames` dataset, `height`×`width` at its native
/// size: the one frame that unit tests of tables, ground truth and evaluation build rows on.
#[doc(hidden)]
pub fn test_frame(height: u32, width: u32) -> FrameRow {
    let id = FrameId {
        dataset: "frames".into(),
        sequence_id: "s".into(),
        frame_index: 0,
        frame_name: "000000".into(),
        source_path: "s/000000.png".into(),
    };
    frame_row(id, &Geometry::native(height as usize, width as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_carries_the_frame_and_its_whole_geometry() {
        let g = Geometry {
            orig_height: 375,
            orig_width: 1242,
            resized_height: 378,
            resized_width: 1252,
            crop_top: 1,
            crop_left: 2,
            height: 376,
            width: 1248,
        };
        let id = FrameId {
            dataset: "kitti".into(),
            sequence_id: "s".into(),
            frame_index: 3,
            frame_name: "000003".into(),
            source_path: "s/000003.png".into(),
        };
        let row = frame_row(id, &g);
        assert_eq!(
            (row.sequence_id.as_str(), row.frame_index, row.frame_name.as_str()),
            ("s", 3, "000003")
        );
        assert_eq!(
            mrdino_outputs::provenance::FrameGeometry::of(&row),
            FrameGeometry {
                height: 376,
                width: 1248,
                orig_height: 375,
                orig_width: 1242,
                resized_height: 378,
                resized_width: 1252,
                crop_top: 1,
                crop_left: 2
            }
        );
        assert!(row.labelled && row.excluded_reason.is_none() && row.num_instances == 0);
    }
}
