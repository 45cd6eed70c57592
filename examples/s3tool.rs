//! A small S3 client on the same SDK as pailfs, for the benchmark's raw baseline, for seeding
//! fixtures and for the demo. Reads PAILFS_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
//! AWS_SECRET_ACCESS_KEY and AWS_REGION. Timed commands print `secs=… bytes=… ops=…`.
//!
//!   s3tool mb BUCKET
//!   s3tool put BUCKET KEY SIZE [SEED]           generated content
//!   s3tool put-file BUCKET KEY PATH
//!   s3tool put-many BUCKET PREFIX COUNT SIZE    PREFIX00000 … with 32 requests in flight
//!   s3tool get-parallel BUCKET KEY PART CONC    whole object by concurrent ranged GETs
//!   s3tool put-parallel BUCKET KEY PATH PART CONC  multipart upload of a local file, parts in parallel
//!   s3tool head BUCKET KEY                      size and user metadata (x-amz-meta-*)
//!   s3tool list BUCKET PREFIX                   every page of ListObjectsV2 (no delimiter)
//!   s3tool get-each BUCKET PREFIX               list, then GET each object one after another
//!   s3tool get-random BUCKET KEY SIZE SECONDS   random ranged GETs of SIZE bytes
//!   s3tool pread-random PATH SIZE SECONDS [SEED] random preads of SIZE bytes on a local path

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use futures::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn client() -> Result<Client> {
    let endpoint = std::env::var("PAILFS_S3_ENDPOINT").map_err(|_| "set PAILFS_S3_ENDPOINT")?;
    let key = std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| "set AWS_ACCESS_KEY_ID")?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| "set AWS_SECRET_ACCESS_KEY")?;
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "garage".into());
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(region))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            key, secret, None, None, "env",
        ))
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Client::from_conf(config))
}

fn generated(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(6364136223846793005).wrapping_add(1));
    (0..size).map(|_| (rng.next() >> 24) as u8).collect()
}

fn arg(args: &[String], i: usize, what: &str) -> Result<String> {
    args.get(i)
        .cloned()
        .ok_or_else(|| format!("missing {what}").into())
}

fn num(args: &[String], i: usize, what: &str) -> Result<u64> {
    Ok(arg(args, i, what)?.parse()?)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn put(c: &Client, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
    // Large bodies go up in 64 MiB parts so the tool's memory stays modest.
    const PART: usize = 64 << 20;
    if body.len() <= PART {
        c.put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await?;
        return Ok(());
    }
    let up = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await?;
    let id = up.upload_id().ok_or("no upload id")?.to_string();
    let mut parts = Vec::new();
    for (i, chunk) in body.chunks(PART).enumerate() {
        let n = i as i32 + 1;
        let out = c
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await?;
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
    }
    complete(c, bucket, key, &id, parts).await
}

async fn complete(
    c: &Client,
    bucket: &str,
    key: &str,
    id: &str,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
) -> Result<()> {
    c.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

async fn object_size(c: &Client, bucket: &str, key: &str) -> Result<u64> {
    let head = c.head_object().bucket(bucket).key(key).send().await?;
    Ok(head.content_length().unwrap_or(0).max(0) as u64)
}

async fn list_keys(c: &Client, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let out = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await?;
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        token = out.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return Ok(keys);
        }
    }
}

fn report(start: Instant, bytes: u64, ops: u64) {
    println!(
        "secs={:.3} bytes={bytes} ops={ops}",
        start.elapsed().as_secs_f64()
    );
}

async fn run(args: Vec<String>) -> Result<()> {
    let cmd = arg(&args, 1, "command")?;
    if cmd == "pread-random" {
        use std::os::unix::fs::FileExt;
        use std::os::unix::io::AsRawFd;
        let file = std::fs::File::open(arg(&args, 2, "path")?)?;
        let size = num(&args, 3, "size")? as usize;
        let secs = num(&args, 4, "seconds")?;
        // SAFETY: advisory call on an open descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        let len = file.metadata()?.len();
        let mut buf = vec![0u8; size];
        // An optional seed: a second run with another seed reads other offsets (the kernel's
        // page cache does not answer for it).
        let seed = num(&args, 5, "seed").unwrap_or(0x9e3779b97f4a7c15);
        let mut rng = Rng(seed);
        let (start, mut ops) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_secs(secs) {
            let off = (rng.next() % (len / size as u64)) * size as u64;
            file.read_exact_at(&mut buf, off)?;
            ops += 1;
        }
        report(start, ops * size as u64, ops);
        return Ok(());
    }
    let c = client()?;
    let bucket = arg(&args, 2, "bucket")?;
    match cmd.as_str() {
        "mb" => match c.create_bucket().bucket(&bucket).send().await {
            Ok(_) => {}
            Err(e) if format!("{e:?}").contains("BucketAlreadyOwnedByYou") => {}
            Err(e) => return Err(e.into()),
        },
        "put" => {
            let key = arg(&args, 3, "key")?;
            let size = num(&args, 4, "size")? as usize;
            let seed = num(&args, 5, "seed").unwrap_or(1);
            put(&c, &bucket, &key, generated(size, seed)).await?;
        }
        "put-file" => {
            let key = arg(&args, 3, "key")?;
            let body = std::fs::read(arg(&args, 4, "path")?)?;
            put(&c, &bucket, &key, body).await?;
        }
        "put-many" => {
            let prefix = arg(&args, 3, "prefix")?;
            let count = num(&args, 4, "count")?;
            let body = generated(num(&args, 5, "size")? as usize, 7);
            let start = Instant::now();
            let results: Vec<Result<()>> = futures::stream::iter(0..count)
                .map(|i| {
                    let (c, bucket, body) = (c.clone(), bucket.clone(), body.clone());
                    let key = format!("{prefix}{i:05}");
                    async move { put(&c, &bucket, &key, body).await }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>>>()?;
            report(start, count * body.len() as u64, count);
        }
        "get-parallel" => {
            let key = arg(&args, 3, "key")?;
            let part = num(&args, 4, "part size")?;
            let conc = num(&args, 5, "concurrency")? as usize;
            let start = Instant::now();
            let size = object_size(&c, &bucket, &key).await?;
            let ranges: Vec<(u64, u64)> = (0..size.div_ceil(part))
                .map(|i| (i * part, ((i + 1) * part).min(size) - 1))
                .collect();
            let total: u64 = futures::stream::iter(ranges)
                .map(|(a, b)| {
                    let (c, bucket, key) = (c.clone(), bucket.clone(), key.clone());
                    async move {
                        let out = c
                            .get_object()
                            .bucket(bucket)
                            .key(key)
                            .range(format!("bytes={a}-{b}"))
                            .send()
                            .await?;
                        Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(
                            out.body.collect().await?.into_bytes().len() as u64,
                        )
                    }
                })
                .buffered(conc)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<u64>>>()?
                .into_iter()
                .sum();
            report(start, total, size.div_ceil(part));
        }
        "put-parallel" => {
            use std::os::unix::fs::FileExt;
            let key = arg(&args, 3, "key")?;
            let file = std::sync::Arc::new(std::fs::File::open(arg(&args, 4, "path")?)?);
            let part = num(&args, 5, "part size")?;
            let conc = num(&args, 6, "concurrency")? as usize;
            let size = file.metadata()?.len();
            let start = Instant::now();
            let up = c
                .create_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await?;
            let id = up.upload_id().ok_or("no upload id")?.to_string();
            let parts: Vec<aws_sdk_s3::types::CompletedPart> =
                futures::stream::iter(0..size.div_ceil(part))
                    .map(|i| {
                        let (c, bucket, key, id, file) = (
                            c.clone(),
                            bucket.clone(),
                            key.clone(),
                            id.clone(),
                            file.clone(),
                        );
                        async move {
                            let len = part.min(size - i * part) as usize;
                            let mut buf = vec![0u8; len];
                            file.read_exact_at(&mut buf, i * part)?;
                            let n = i as i32 + 1;
                            let out = c
                                .upload_part()
                                .bucket(bucket)
                                .key(key)
                                .upload_id(id)
                                .part_number(n)
                                .body(ByteStream::from(buf))
                                .send()
                                .await?;
                            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                                aws_sdk_s3::types::CompletedPart::builder()
                                    .part_number(n)
                                    .set_e_tag(out.e_tag().map(str::to_string))
                                    .build(),
                            )
                        }
                    })
                    .buffered(conc)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>>>()?;
            complete(&c, &bucket, &key, &id, parts).await?;
            report(start, size, size.div_ceil(part));
        }
        "head" => {
            let key = arg(&args, 3, "key")?;
            let out = c.head_object().bucket(&bucket).key(&key).send().await?;
            println!("size {}", out.content_length().unwrap_or(0));
            let mut metadata: Vec<_> = out.metadata().into_iter().flatten().collect();
            metadata.sort();
            for (name, value) in metadata {
                println!("x-amz-meta-{name}: {value}");
            }
        }
        "list" => {
            let prefix = arg(&args, 3, "prefix")?;
            let start = Instant::now();
            let keys = list_keys(&c, &bucket, &prefix).await?;
            report(start, 0, keys.len() as u64);
        }
        "get-each" => {
            let prefix = arg(&args, 3, "prefix")?;
            let keys = list_keys(&c, &bucket, &prefix).await?;
            let start = Instant::now();
            let mut bytes = 0u64;
            for key in &keys {
                let out = c.get_object().bucket(&bucket).key(key).send().await?;
                bytes += out.body.collect().await?.into_bytes().len() as u64;
            }
            report(start, bytes, keys.len() as u64);
        }
        "get-random" => {
            let key = arg(&args, 3, "key")?;
            let size = num(&args, 4, "size")?;
            let secs = num(&args, 5, "seconds")?;
            let len = object_size(&c, &bucket, &key).await?;
            // An optional seed: a second run with another seed reads other offsets (the kernel's
            // page cache does not answer for it).
            let seed = num(&args, 5, "seed").unwrap_or(0x9e3779b97f4a7c15);
            let mut rng = Rng(seed);
            let (start, mut ops) = (Instant::now(), 0u64);
            while start.elapsed() < Duration::from_secs(secs) {
                let off = (rng.next() % (len / size)) * size;
                let out = c
                    .get_object()
                    .bucket(&bucket)
                    .key(&key)
                    .range(format!("bytes={off}-{}", off + size - 1))
                    .send()
                    .await?;
                out.body.collect().await?;
                ops += 1;
            }
            report(start, ops * size, ops);
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(std::env::args().collect()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3tool: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
