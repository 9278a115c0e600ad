//! Overlay PNGs of sampled labelled frames, drawn from the written tables and the source frames.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mrdino_datasets::Sequence;
use mrdino_outputs::layout::{unit_key, Layout};
use mrdino_outputs::overlay::{write_overlay, OverlayInstance};
use mrdino_outputs::tables::{read_frames, read_instances};
use mrdino_outputs::InstanceRow;

/// Writes overlays of up to `count` labelled frames (evenly spaced over all labelled frames, preferring
/// frames with instances) into `OUT/overlays/`. Returns the written paths.
pub fn write_overlays(layout: &Layout, sequences: &[Sequence], count: usize) -> Result<Vec<PathBuf>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut candidates: Vec<(String, u32, String)> = Vec::new();
    let mut instances: BTreeMap<(String, u32), Vec<InstanceRow>> = BTreeMap::new();
    for sequence in sequences {
        let frames_file = layout.frames_file(&sequence.id);
        if !frames_file.is_file() {
            continue;
        }
        for row in read_frames(&frames_file)? {
            if row.labelled && row.num_instances > 0 {
                candidates.push((row.sequence_id.clone(), row.frame_index, row.frame_name.clone()));
            }
        }
        for row in read_instances(&layout.instances_file(&sequence.id))? {
            instances
                .entry((row.sequence_id.clone(), row.frame_index))
                .or_default()
                .push(row);
        }
    }
    let chosen: Vec<&(String, u32, String)> = if candidates.len() <= count {
        candidates.iter().collect()
    } else {
        (0..count).map(|k| &candidates[k * candidates.len() / count]).collect()
    };
    let dir = layout.root.join("overlays");
    let mut written = Vec::new();
    for (sequence_id, frame_index, frame_name) in chosen {
        let Some(sequence) = sequences.iter().find(|s| &s.id == sequence_id) else {
            continue;
        };
        let frame = decode_frame(sequence, *frame_index as usize)
            .with_context(|| format!("cannot re-read frame {frame_index} of {sequence_id} for its overlay"))?;
        let rows = instances
            .get(&(sequence_id.clone(), *frame_index))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let items: Vec<OverlayInstance<'_>> = rows.iter().map(OverlayInstance::of_row).collect();
        let path = dir.join(format!("{}-{}.png", unit_key(sequence_id), frame_name));
        write_overlay(&path, &frame.image.data, frame.image.height, frame.image.width, &items)?;
        written.push(path);
    }
    Ok(written)
}

fn decode_frame(sequence: &Sequence, index: usize) -> Result<mrdino_datasets::Frame> {
    if let Some(files) = sequence.image_files() {
        let file = files.get(index).context("frame index beyond the sequence")?;
        let (image, geometry) = mrdino_datasets::decode::read_processed(&file.path, &sequence.processing)?;
        return Ok(mrdino_datasets::Frame {
            index,
            name: file.name.clone(),
            image,
            geometry,
        });
    }
    for (i, item) in sequence.frames()? {
        if i == index {
            return Ok(item?);
        }
    }
    anyhow::bail!("video ended before frame {index}")
}
