//! A class-parallel head's shards and its checkpoint: a checkpoint written from streams of the
//! centres' and momentum's rows is the file a single process writes, byte for byte; a shard
//! read from a checkpoint is the whole tensor's rows (and a damaged file is refused when read
//! for a shard as when read whole); a rank's rows reach rank 0 in class order, chunk by chunk.

mod common;

use margrad::checkpoint::{self, CheckpointError, RowStream, StreamedParam, TrainingState};
use margrad::distributed::{ClassParallelHead, World};
use margrad::loss::MarginLoss;
use margrad::nn::{HeadConfig, MlpConfig, Model, ModelConfig};
use margrad::optim::{Method, Optimizer, ParamState};
use margrad::{ParamId, Params, Tensor, seeded_rng};
use std::io;

const CLASSES: usize = 50;
const DIM: usize = 4;

/// A model with a centres head `[50, 4]`, and a training state in which every parameter, the
/// centres included, has a momentum.
fn model() -> (Model<f32>, Params<f32>, TrainingState<f32>, ParamId) {
    let config = ModelConfig {
        embedder: MlpConfig::new(&[6, DIM]).sequential().unwrap(),
        head: HeadConfig::Centres {
            classes: CLASSES,
            loss: MarginLoss::am(30.0, 0.35).unwrap(),
        },
    };
    let mut params = Params::new();
    let model = Model::new(config, &mut params, &mut seeded_rng(1)).unwrap();
    let method = Method::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    let mut state = Optimizer::new(method, &params, 0.1, 0.0)
        .unwrap()
        .state()
        .clone();
    let mut rng = seeded_rng(2);
    state.per_param = params
        .ids()
        .map(|id| {
            Some(ParamState {
                steps: 3,
                first: Tensor::randn(params.get(id).shape(), 0.0, 1.0, &mut rng),
                second: Tensor::zeros(&[0]),
            })
        })
        .collect();
    let training = TrainingState {
        optimizer: state,
        epoch: 7,
        rng: seeded_rng(3),
        history: Vec::new(),
    };
    let centres = model.head().parameters()[0];
    (model, params, training, centres)
}

/// What a stream hands a tensor's elements to.
type Sink<'a> = dyn FnMut(&[f32]) -> io::Result<()> + 'a;

/// A stream of a tensor's elements ([`checkpoint::RowStream`]), boxed.
type Stream<'a> = Box<dyn FnMut(&mut Sink) -> io::Result<()> + 'a>;

/// Hands `data` to the sink `chunk` elements at a time.
fn in_chunks(data: &[f32], chunk: usize) -> impl FnMut(&mut Sink) -> io::Result<()> + '_ {
    move |sink| data.chunks(chunk).try_for_each(&mut *sink)
}

/// Saves the model to `path` with the centres and their momentum streamed from `value` and
/// `moment` (the store and the state holding empty stand-ins).
fn save_streamed(
    path: &std::path::Path,
    value: RowStream<'_, f32>,
    moment: RowStream<'_, f32>,
) -> Result<(), CheckpointError> {
    let (model, mut params, mut training, centres) = model();
    *params.get_mut(centres) = Tensor::zeros(&[0]);
    training.optimizer.per_param[centres.index()]
        .as_mut()
        .unwrap()
        .first = Tensor::zeros(&[0]);
    let streamed = StreamedParam {
        id: centres,
        shape: [CLASSES, DIM],
        value,
        moment,
    };
    checkpoint::save_streamed(path, &model, &params, &training, streamed)
}

/// The centres' elements and their momentum's, as the streams hand them over.
fn centres_and_momentum(
    params: &Params<f32>,
    training: &TrainingState<f32>,
    centres: ParamId,
) -> (Vec<f32>, Vec<f32>) {
    let state = training.optimizer.per_param[centres.index()].as_ref();
    let moment = state.expect("the centres have a momentum").first.data();
    (params.get(centres).data().to_vec(), moment.to_vec())
}

#[test]
fn a_checkpoint_streamed_from_rows_is_the_file_one_process_writes() {
    let scratch = common::Scratch::new("shards-streamed");
    let (model, params, training, centres) = model();
    let whole = scratch.path("whole.margrad");
    checkpoint::save(&whole, &model, &params, Some(&training)).unwrap();
    let (value, moment) = centres_and_momentum(&params, &training, centres);
    // chunks that cut rows, and one element at a time
    for chunk in [7, 1, CLASSES * DIM] {
        let streamed = scratch.path("streamed.margrad");
        save_streamed(
            &streamed,
            &mut in_chunks(&value, chunk),
            &mut in_chunks(&moment, chunk),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&streamed).unwrap(),
            std::fs::read(&whole).unwrap(),
            "chunks of {chunk}"
        );
    }
}

#[test]
fn a_stream_that_fails_ends_early_or_hands_over_a_nan_leaves_the_previous_file() {
    let scratch = common::Scratch::new("shards-failed");
    let path = scratch.path("checkpoint.margrad");
    let (_, params, training, centres) = model();
    let (value, moment) = centres_and_momentum(&params, &training, centres);
    save_streamed(&path, &mut in_chunks(&value, 9), &mut in_chunks(&moment, 9)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let short = &moment[..moment.len() - 1];
    let mut nan = value.clone();
    nan[77] = f32::NAN;
    let failing = |sink: &mut Sink| {
        sink(&[1.0])?;
        Err(io::Error::other("rank 1 of 2 failed"))
    };
    let cases: [(&str, Stream, Stream); 3] = [
        (
            "the momentum: its stream ended after 199 of its 200 elements",
            Box::new(in_chunks(&value, 9)),
            Box::new(in_chunks(short, 9)),
        ),
        (
            "refusing to save head.weight: element 77 is NaN",
            Box::new(in_chunks(&nan, 9)),
            Box::new(in_chunks(&moment, 9)),
        ),
        (
            "rank 1 of 2 failed",
            Box::new(failing),
            Box::new(in_chunks(&moment, 9)),
        ),
    ];
    for (message, mut value, mut moment) in cases {
        let err = save_streamed(&path, &mut *value, &mut *moment).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Io { .. }) && err.to_string().contains(message),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "{message}");
    }
}

#[test]
fn a_shard_read_from_a_checkpoint_is_the_whole_tensors_rows() {
    let scratch = common::Scratch::new("shards-read");
    let path = scratch.path("checkpoint.margrad");
    let (model, params, training, centres) = model();
    checkpoint::save(&path, &model, &params, Some(&training)).unwrap();
    let whole = checkpoint::load::<f32>(&path).unwrap();
    let whole_training = whole.training.unwrap();
    let mut shards: Vec<_> = [(1, 0), (3, 0), (3, 2), (7, 6), (50, 17)]
        .iter()
        .map(|&(ranks, rank)| ClassParallelHead::shard_of(CLASSES, ranks, rank))
        .collect();
    shards.extend([0..0, 49..50, 10..37]);
    for rows in shards {
        let shard = checkpoint::load_rows::<f32>(&path, "head.weight", rows.clone()).unwrap();
        let cut = |t: &Tensor<f32>| t.data()[rows.start * DIM..rows.end * DIM].to_vec();
        for id in whole.params.ids() {
            let got = shard.params.get(id);
            match id == centres {
                true => {
                    assert_eq!(got.shape(), [rows.len(), DIM]);
                    assert_eq!(got.data(), cut(whole.params.get(id)), "{rows:?}");
                }
                false => assert_eq!(got, whole.params.get(id)),
            }
        }
        let training = shard.training.unwrap();
        for (index, (got, all)) in training
            .optimizer
            .per_param
            .iter()
            .zip(&whole_training.optimizer.per_param)
            .enumerate()
        {
            let (got, all) = (got.as_ref().unwrap(), all.as_ref().unwrap());
            assert_eq!((got.steps, &got.second), (all.steps, &all.second));
            match index == centres.index() {
                true => {
                    assert_eq!(got.first.shape(), [rows.len(), DIM]);
                    assert_eq!(got.first.data(), cut(&all.first), "{rows:?}");
                }
                false => assert_eq!(got.first, all.first),
            }
        }
        assert_eq!(training.rng, whole_training.rng);
        assert_eq!(training.epoch, whole_training.epoch);
        assert_eq!(training.optimizer.groups, whole_training.optimizer.groups);
    }
}

#[test]
fn a_damaged_checkpoint_read_for_a_shard_is_refused_with_a_clear_error() {
    let scratch = common::Scratch::new("shards-damaged");
    let path = scratch.path("checkpoint.margrad");
    let (saved, params, training, centres) = model();
    checkpoint::save(&path, &saved, &params, Some(&training)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let read = |bytes: &[u8], rows| {
        let damaged = scratch.path("damaged.margrad");
        std::fs::write(&damaged, bytes).unwrap();
        checkpoint::load_rows::<f32>(&damaged, "head.weight", rows).unwrap_err()
    };
    // truncated: refused before the body is read
    let err = read(&bytes[..bytes.len() / 2], 0..10);
    assert!(matches!(err, CheckpointError::Truncated { .. }), "{err}");
    // a byte flipped in rows that are dropped still fails the checksum: the last centre
    let last_centre = {
        let tail = params.get(centres).data()[CLASSES * DIM - 1].to_le_bytes();
        bytes.windows(4).rposition(|w| w == tail).unwrap()
    };
    let mut flipped = bytes.clone();
    flipped[last_centre] ^= 0x10;
    let err = read(&flipped, 0..10);
    assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
    // rows the tensor does not have, a tensor the file does not hold
    let err = read(&bytes, 40..60);
    assert!(
        err.to_string()
            .contains("tensor \"head.weight\", from body byte")
            && err
                .to_string()
                .contains("it has 50 rows, and rows 40..60 were asked for"),
        "{err}"
    );
    let err = checkpoint::load_rows::<f32>(&path, "head.bias", 0..1).unwrap_err();
    assert_eq!(err, CheckpointError::MissingTensor("head.bias".into()));
}

#[test]
fn a_shard_reaches_rank_0_in_order_in_bounded_chunks_and_a_failing_sink_stops_receiving() {
    // a world of one: the shard is the whole head, handed over a chunk at a time
    let world = World::single();
    let head = margrad::loss::BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 64).unwrap();
    let classes = 600;
    let head = ClassParallelHead::new(head, classes, &world).unwrap();
    let local = Tensor::<f32>::randn(&[classes, 1000], 0.0, 1.0, &mut seeded_rng(4));
    let mut received = Vec::new();
    let mut chunks = 0;
    let streamed = head.stream_in_order(&world, &local, |chunk: &[f32]| {
        assert!(chunk.len() <= ClassParallelHead::STREAM_CHUNK);
        chunks += 1;
        received.extend_from_slice(chunk);
        Ok::<_, String>(())
    });
    assert_eq!(streamed, Ok(()));
    assert_eq!(received, local.data());
    assert!(chunks >= 3, "{chunks} chunks");
    let mut calls = 0;
    let failed = head.stream_in_order(&world, &local, |_: &[f32]| {
        calls += 1;
        Err(format!("disk full at call {calls}"))
    });
    assert_eq!(failed, Err("disk full at call 1".to_string()));
    assert_eq!(calls, 1);
}
