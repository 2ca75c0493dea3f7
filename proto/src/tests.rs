use super::*;
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn frame_roundtrip() {
    rt().block_on(async {
        let mut buf = Vec::new();
        let req = Request::Ping { nonce: 7 };
        write_frame(&mut buf, &req, MAX_FRAME).await.unwrap();
        let back: Request = read_frame(&mut &buf[..], MAX_FRAME).await.unwrap().unwrap();
        assert_eq!(back, req);
    });
}

#[test]
fn oversized_length_is_refused_before_reading_body() {
    rt().block_on(async {
        let header = ((MAX_FRAME as u32) + 1).to_be_bytes();
        let err = read_frame::<_, Request>(&mut &header[..], MAX_FRAME)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    });
}

#[test]
fn truncated_frame_is_an_error_and_empty_stream_is_not() {
    rt().block_on(async {
        let empty: [u8; 0] = [];
        assert!(read_frame::<_, Request>(&mut &empty[..], MAX_FRAME)
            .await
            .unwrap()
            .is_none());
        let partial = [0u8, 0, 0, 10, 1, 2];
        let err = read_frame::<_, Request>(&mut &partial[..], MAX_FRAME)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
    });
}

#[test]
fn load_datagram_roundtrip() {
    let d = Datagram::Load {
        node: "n1".into(),
        record: LoadRecord {
            cpus: 2,
            load1: 0.5,
            freemem: 1 << 30,
            totalmem: 2 << 30,
            procs: 12,
            speed: 900,
            uptime: 3,
        },
    };
    assert_eq!(Datagram::decode(&d.encode()).unwrap(), d);
    assert!(Datagram::decode(&[]).is_err());
    assert!(Datagram::decode(&[9, 1, 2]).is_err());
}

proptest! {
    // Whatever bytes arrive, decoding returns an error or a value: never a panic.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Request>(&bytes);
        let _ = Datagram::decode(&bytes);
        rt().block_on(async {
            let _ = read_frame::<_, Request>(&mut &bytes[..], 256).await;
        });
    }
}
