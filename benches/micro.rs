//! Criterion micro-benchmarks of the per-request work hooktap adds: routing, payload
//! extraction, signing, and a webhook's filter, ordering key and key heads. `cargo bench --bench micro` (about a minute on 2 cores).
//!
//! Everything is built through the public API, as a rule file would be: rule sets are generated
//! as TOML, parsed into `RawRuleFile` and compiled with `RuleSet::add`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hooktap::capture::{Exchange, RequestParts, ResponseParts};
use hooktap::delivery::sign::{self, Message};
use hooktap::rules::RuleSet;
use hooktap::rules::raw::RawRuleFile;
use hooktap::webhook::Profile;
use http::{HeaderMap, HeaderValue, Method};

/// The rule every set contains, and the one the "hit" lookup finds.
const HIT_RULE: &str = r#"
[[rule]]
name = "order updated"
topic = "order.updated"
method = ["PUT", "PATCH"]
path = "/orders/{id}"
[rule.payload]
id = "$.params.id"
"#;

/// A rule file of `n` rules: the hit rule plus `n - 1` generated ones in three shapes, some
/// sharing the hit rule's prefix so that the tree is not trivially split at the first byte.
fn rule_file(n: usize) -> String {
    let mut toml = String::from(HIT_RULE);
    for i in 1..n {
        let (method, path) = match i % 3 {
            0 => ("POST", format!("/orders/{{id}}/items{i}")),
            1 => ("PUT", format!("/res{i}/{{id}}")),
            _ => ("GET", format!("/res{i}/{{id}}/files/{{*file}}")),
        };
        toml.push_str(&format!(
            "\n[[rule]]\nname = \"rule {i}\"\ntopic = \"bench.r{i}\"\nmethod = \"{method}\"\npath = \"{path}\"\n"
        ));
    }
    toml
}

fn rule_set(toml: &str) -> RuleSet {
    let file: RawRuleFile = toml::from_str(toml).expect("generated rule file parses");
    let mut set = RuleSet::default();
    for rule in file.rule {
        set.add(rule).expect("generated rule compiles");
    }
    set
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [1usize, 100, 10_000] {
        let set = rule_set(&rule_file(n));
        assert_eq!(set.rules().len(), n);
        let put = Method::PUT;
        let get = Method::GET;
        assert!(set.candidates(&put, "/orders/42").is_some());
        assert!(set.candidates(&get, "/catalogue/7/reviews").is_none());
        group.bench_with_input(BenchmarkId::new("hit", n), &set, |b, set| {
            b.iter(|| set.candidates(black_box(&put), black_box("/orders/42")));
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &set, |b, set| {
            b.iter(|| set.candidates(black_box(&get), black_box("/catalogue/7/reviews")));
        });
        // A path that is a route, with a method no rule of it takes: the passthrough of
        // `GET /orders/{id}` in the end-to-end benchmark.
        group.bench_with_input(BenchmarkId::new("method-miss", n), &set, |b, set| {
            b.iter(|| set.candidates(black_box(&get), black_box("/orders/42")));
        });
    }
    group.finish();
}

/// A typical order: the request a shop front posts and the ~1 KB answer of the shop.
const ORDER_REQUEST: &str = r#"{"email":"buyer@example.com","event_id":3,"tickets":2,"seats":["A12","A13"],"coupon":null,"newsletter":false}"#;
const ORDER_RESPONSE: &str = concat!(
    r#"{"id":1042,"status":"paid","total":90.0,"currency":"EUR","created_at":"2026-06-01T18:00:00Z","#,
    r#""customer":{"name":"Ada Lovelace","phone":"+44 20 7946 0000","address":{"#,
    r#""street":"12 Analytical Row","city":"London","postcode":"N1 9GU","country":"GB"}},"#,
    r#""tickets":[{"id":"T-1001","seat":"A12","price":45.0,"type":"adult","#,
    r#""barcode":"8f14e45fceea167a5a36dedd4bea2543"},{"id":"T-1002","seat":"A13","#,
    r#""price":45.0,"type":"adult","barcode":"c9f0f895fb98ab9159f51fd0297e236d"}],"#,
    r#""event":{"id":3,"name":"Symphony No. 9 - Opening Night","venue":"Royal Festival Hall","#,
    r#""starts_at":"2026-06-01T19:30:00Z","doors_at":"2026-06-01T18:45:00Z"},"#,
    r#""payment":{"method":"card","brand":"visa","last4":"4242","#,
    r#""authorised_at":"2026-06-01T18:00:02Z","reference":"pi_3PqR5sT6uV7wX8yZ9aB0cD1e"},"#,
    r#""notes":"Wheelchair space requested for seat A12; please contact the box office "#,
    r#"before the performance. Tickets are non-transferable.","channel":"online","#,
    r#""lang":"en-GB","source":"box-office-web","affiliate":null,"gift":false}"#
);

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).expect("valid header value"));
    }
    h
}

fn exchange() -> Exchange {
    Exchange {
        request: RequestParts {
            method: "POST".to_owned(),
            path: "/orders".to_owned(),
            query: None,
            headers: headers(&[
                ("host", "tickets.example.com"),
                (
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
                ),
                ("accept", "application/json"),
                ("content-type", "application/json"),
                ("content-length", &ORDER_REQUEST.len().to_string()),
                ("cookie", "session=9f8e7d6c5b4a; consent=1"),
            ]),
            body: Some(Bytes::from_static(ORDER_REQUEST.as_bytes())),
        },
        response: ResponseParts {
            status: 201,
            headers: headers(&[
                ("content-type", "application/json; charset=utf-8"),
                ("content-length", &ORDER_RESPONSE.len().to_string()),
                ("location", "/orders/1042"),
                ("date", "Mon, 01 Jun 2026 18:00:02 GMT"),
                ("cache-control", "no-store"),
            ]),
            body: Some(Bytes::from_static(ORDER_RESPONSE.as_bytes())),
        },
    }
}

fn payload(c: &mut Criterion) {
    let rules = rule_set(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rules/ticket-shop.toml"
        ))
        .expect("example rules"),
    );
    let candidates = rules
        .candidates(&Method::POST, "/orders")
        .expect("POST /orders is a candidate");
    let max_decoded = 8 << 20;
    {
        let mut doc = exchange().into_document(max_decoded).value;
        let events = rules.evaluate(&candidates, &mut doc);
        assert_eq!(events.len(), 1, "the example order makes one event");
        assert_eq!(events[0].event.topic, "order.created");
    }
    let mut group = c.benchmark_group("payload");
    group.throughput(Throughput::Bytes(
        (ORDER_REQUEST.len() + ORDER_RESPONSE.len()) as u64,
    ));
    group.bench_function("document", |b| {
        b.iter_batched(
            exchange,
            |x| x.into_document(max_decoded),
            BatchSize::SmallInput,
        );
    });
    let doc = exchange().into_document(max_decoded).value;
    group.bench_function("evaluate", |b| {
        b.iter_batched_ref(
            || doc.clone(),
            |doc| rules.evaluate(&candidates, doc),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("document+evaluate", |b| {
        b.iter_batched(
            exchange,
            |x| {
                let mut doc = x.into_document(max_decoded).value;
                rules.evaluate(&candidates, &mut doc).len()
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// The same rule twice: a `when` and a payload with one computed field, once in JSONPath form
/// (list predicates, paths, a regex), once in CEL. Both derive the same event.
const JSONPATH_RULE: &str = r#"
[[rule]]
name = "order paid"
topic = "order.paid"
method = "POST"
path = "/orders"
status = [201]
when = [
  { path = "$.response.body.status", in = ["new", "paid"] },
  { path = "$.request.body.tickets", gt = 1 },
]
[rule.payload]
id = "$.response.body.id"
email = "$.request.body.email"
total = "$.response.body.total"
city = "$.response.body.customer.address.city"
domain = { path = "$.request.body.email", regex = "@(.+)$" }
"#;

const CEL_RULE: &str = r#"
[[rule]]
name = "order paid"
topic = "order.paid"
method = "POST"
path = "/orders"
status = [201]
when = "response.body.status in ['new', 'paid'] && request.body.tickets > 1"
[rule.payload]
id = "$.response.body.id"
email = "$.request.body.email"
total = "$.response.body.total"
city = "$.response.body.customer.address.city"
domain = { expr = "request.body.email.split('@')[1]" }
"#;

/// A CEL `when` and a computed payload field against the same rule in JSONPath form.
fn expressions(c: &mut Criterion) {
    let max_decoded = 8 << 20;
    let doc = exchange().into_document(max_decoded).value;
    let sets: Vec<RuleSet> = [JSONPATH_RULE, CEL_RULE].map(rule_set).into();
    // On a shared machine criterion's runs of one after the other see different loads: also
    // measure the two interleaved, batch by batch, and keep each one's fastest batch.
    {
        let candidates: Vec<_> = sets
            .iter()
            .map(|r| r.candidates(&Method::POST, "/orders").expect("candidate"))
            .collect();
        let mut docs = [doc.clone(), doc.clone()];
        let mut best = [Duration::MAX; 2];
        const BATCH: u32 = 200;
        for _ in 0..300 {
            for i in 0..2 {
                let start = std::time::Instant::now();
                for _ in 0..BATCH {
                    black_box(sets[i].evaluate(&candidates[i], &mut docs[i]));
                }
                best[i] = best[i].min(start.elapsed() / BATCH);
            }
        }
        println!(
            "rule, interleaved (fastest of 300 batches of {BATCH}): jsonpath {:.2} µs, cel {:.2} µs, cel/jsonpath {:.2}",
            best[0].as_secs_f64() * 1e6,
            best[1].as_secs_f64() * 1e6,
            best[1].as_secs_f64() / best[0].as_secs_f64()
        );
    }
    let mut group = c.benchmark_group("rule");
    for (name, rules) in ["jsonpath", "cel"].into_iter().zip(&sets) {
        let candidates = rules
            .candidates(&Method::POST, "/orders")
            .expect("POST /orders is a candidate");
        let events = rules.evaluate(&candidates, &mut doc.clone());
        assert_eq!(events.len(), 1, "{name}: one event");
        assert_eq!(
            events[0].event.payload,
            serde_json::json!({"id": 1042, "email": "buyer@example.com", "total": 90.0,
                               "city": "London", "domain": "example.com"}),
            "{name}: the same payload"
        );
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || doc.clone(),
                |doc| rules.evaluate(&candidates, doc),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn signing(c: &mut Criterion) {
    let body: Vec<u8> = ORDER_RESPONSE.bytes().cycle().take(1024).collect();
    let mut group = c.benchmark_group("sign");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("hmac_sha256_base64/1KiB", |b| {
        b.iter(|| sign::hmac_sha256_base64(black_box(b"s3cret"), black_box(&body)));
    });
    group.bench_function("headers/hooktap/1KiB", |b| {
        b.iter(|| {
            sign::headers(
                Profile::Hooktap,
                "X-Hooktap-Webhook-",
                "s3cret",
                None,
                &Message {
                    webhook_id: "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                    delivery_id: "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
                    topic: Some("order.created"),
                    source: "https://tickets.example.com/",
                    timestamp: 1_780_000_000,
                    body: black_box(&body),
                },
            )
        });
    });
    group.finish();
}

/// What one matched request costs the store, and what sled's batches cost: `Store::append`
/// (one event, one delivery), and the same five keys written by hand as one sled batch, as
/// five single inserts, and 32 events' keys in one batch (per event).
fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hooktap.toml");
    std::fs::write(
        &file,
        format!(
            "rules = [\"{}/rules/*.toml\"]\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n[store]\npath = \"{}\"\n",
            env!("CARGO_MANIFEST_DIR"),
            dir.path().join("store").display()
        ),
    )
    .expect("write config");
    let config = hooktap::config::Config::load(&file).expect("bench config loads");
    let store = hooktap::store::SledStore::open(&config.store).expect("open store");
    let topic = hooktap::event::Topic::parse("order.created").expect("topic");
    let webhook = uuid::Uuid::now_v7();
    let event = || {
        hooktap::event::Event::new(
            &topic,
            "order created",
            serde_json::json!({"id": 1042, "status": "paid", "email": "buyer@example.com",
                "event_id": 3, "tickets": 2, "total": 90.0, "location": "1042"}),
        )
    };
    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    group.bench_function("append/1-event-1-delivery", |b| {
        b.iter_batched(
            || {
                let e = event();
                let d = hooktap::event::Delivery::new(&e, webhook, 0);
                (e, d)
            },
            |(e, d)| store.append(&e, std::slice::from_ref(&d)).expect("append"),
            BatchSize::SmallInput,
        );
    });
    let db = sled::Config::new()
        .path(dir.path().join("raw"))
        .flush_every_ms(Some(500))
        .open()
        .expect("open sled");
    let record = serde_json::to_vec(&event()).expect("json");
    let keys = |n: u64| -> Vec<(Vec<u8>, Vec<u8>)> {
        let id = uuid::Uuid::now_v7();
        let k = |p: u8| {
            let mut key = vec![p];
            key.extend_from_slice(id.as_bytes());
            key.extend_from_slice(&n.to_be_bytes());
            key
        };
        vec![
            (k(b'e'), record.clone()),
            (k(b'd'), record[..300.min(record.len())].to_vec()),
            (k(b'q'), Vec::new()),
            (k(b'x'), Vec::new()),
            (k(b'v'), Vec::new()),
        ]
    };
    let mut n = 0u64;
    group.bench_function("sled/5-keys-one-batch", |b| {
        b.iter_batched(
            || {
                n += 1;
                keys(n)
            },
            |kv| {
                let mut batch = sled::Batch::default();
                for (k, v) in kv {
                    batch.insert(k, v);
                }
                db.apply_batch(batch).expect("batch");
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("sled/5-keys-5-inserts", |b| {
        b.iter_batched(
            || {
                n += 1;
                keys(n)
            },
            |kv| {
                for (k, v) in kv {
                    db.insert(k, v).expect("insert");
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.throughput(Throughput::Elements(32));
    group.bench_function("sled/32-events-one-batch", |b| {
        b.iter_batched(
            || {
                (0..32)
                    .flat_map(|_| {
                        n += 1;
                        keys(n)
                    })
                    .collect::<Vec<_>>()
            },
            |kv| {
                let mut batch = sled::Batch::default();
                for (k, v) in kv {
                    batch.insert(k, v);
                }
                db.apply_batch(batch).expect("batch");
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// What a webhook's delivery settings add: at intake, its `filter` (two predicates) and its
/// `ordering_key` over a typical payload, per event and webhook; in the scheduler, finding the
/// heads of its keys (`claim_key_heads`) in a queue of 1,000 deliveries over 100 keys, against
/// reading the first 8 of the same queue (`queued`, what an unkeyed webhook does).
fn webhook_settings(c: &mut Criterion) {
    use hooktap::event::{Delivery, Event, Topic};
    use hooktap::rules::raw::RawWhen;
    use hooktap::webhook::{check_ordering_key, compile_filter, ordering_key_of};

    let filter: Vec<RawWhen> = toml::from_str::<toml::Table>(
        "f = [{ path = \"$.total\", gt = 50 }, { path = \"$.status\", in = [\"paid\", \"shipped\"] }]",
    )
    .expect("toml")
    .remove("f")
    .expect("f")
    .try_into()
    .expect("predicates");
    let filter = compile_filter(&filter).expect("filter compiles");
    let key = check_ordering_key("$.id").expect("key compiles");
    let payload = serde_json::json!({"id": 1042, "status": "paid", "email": "buyer@example.com",
        "event_id": 3, "tickets": 2, "total": 90.0, "location": "1042"});
    let mut group = c.benchmark_group("webhook");
    group.bench_function("select/filter-2-and-ordering-key", |b| {
        b.iter(|| {
            let payload = black_box(&payload);
            filter
                .iter()
                .all(|p| p.holds(payload))
                .then(|| ordering_key_of(&key, payload))
        });
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hooktap.toml");
    std::fs::write(
        &file,
        format!(
            "rules = [\"{}/rules/*.toml\"]\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n[store]\npath = \"{}\"\n",
            env!("CARGO_MANIFEST_DIR"),
            dir.path().join("store").display()
        ),
    )
    .expect("write config");
    let config = hooktap::config::Config::load(&file).expect("bench config loads");
    let store = hooktap::store::SledStore::open(&config.store).expect("open store");
    let topic = Topic::parse("order.paid").expect("topic");
    let webhook = uuid::Uuid::now_v7();
    for i in 0..1_000 {
        let e = Event::new(&topic, "r", serde_json::json!({"id": i % 100}));
        let mut d = Delivery::new(&e, webhook, 0);
        d.ordering_key = Some((i % 100).to_string());
        store.append(&e, std::slice::from_ref(&d)).expect("append");
    }
    let none = std::collections::HashSet::new();
    group.sample_size(20);
    group.bench_function("queue/queued-8-of-1000", |b| {
        b.iter(|| store.queued(webhook, u64::MAX, 8, &none).expect("queued"));
    });
    group.bench_function("queue/claim_key_heads-8-of-1000-in-100-keys", |b| {
        b.iter(|| {
            store
                .claim_key_heads(webhook, u64::MAX, 8, &none)
                .expect("heads")
        });
    });
    // Every key's head in flight: the whole queue is walked and nothing may go.
    let all_heads: std::collections::HashSet<uuid::Uuid> = store
        .claim_key_heads(webhook, u64::MAX, 100, &none)
        .expect("heads")
        .ready
        .iter()
        .map(|d| d.id)
        .collect();
    group.bench_function("queue/claim_key_heads-every-key-in-flight", |b| {
        b.iter(|| {
            store
                .claim_key_heads(webhook, u64::MAX, 8, &all_heads)
                .expect("heads")
        });
    });
    group.finish();
}

/// What the console's reads cost on sled: a webhook's statistics over a day with 100,000
/// attempts in it (another webhook's 100,000 beside them), read through the `t` index, against
/// reading the same attempts' records (what it would cost without the index); and a payload
/// search that finds nothing, so reads its whole cap of 10,000 events.
fn console(c: &mut Criterion) {
    use hooktap::event::{Attempt, Delivery, DeliveryState, Event, Topic, unix_ms};
    use hooktap::store::{EventQuery, Recorded, StatsWindow};
    const ATTEMPTS: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hooktap.toml");
    let hook = |name: &str| {
        format!(
            "[[webhook]]\nname = \"{name}\"\nurl = \"https://crm.example/hooks\"\nsecret = \"s\"\ntopics = [\"*\"]\n"
        )
    };
    std::fs::write(
        &file,
        format!(
            "rules = [\"{}/rules/*.toml\"]\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n[store]\npath = \"{}\"\n{}{}{}",
            env!("CARGO_MANIFEST_DIR"),
            dir.path().join("store").display(),
            hook("busy"),
            hook("other"),
            hook("backlog"),
        ),
    )
    .expect("write config");
    let config = hooktap::config::Config::load(&file).expect("bench config loads");
    let store = hooktap::store::SledStore::open(&config.store).expect("open store");
    let hooks: Vec<hooktap::webhook::Webhook> = config
        .webhooks
        .iter()
        .map(|spec| hooktap::webhook::Webhook::new(spec.clone(), hooktap::webhook::Origin::Config))
        .collect();
    for h in &hooks {
        store.put_webhook(h).expect("webhook");
    }
    let topic = Topic::parse("order.created").expect("topic");
    let (busy, other, backlog) = (hooks[0].id, hooks[1].id, hooks[2].id);
    // A receiver down for a while: 100k deliveries waiting (memory holds some, `q` entries
    // list the rest).
    for i in 0..ATTEMPTS {
        let e = Event::new(&topic, "order created", serde_json::json!({"id": i}));
        let d = Delivery::new(&e, backlog, 0);
        store.append(&e, std::slice::from_ref(&d)).expect("append");
    }
    let now = time::OffsetDateTime::now_utc();
    for w in [busy, other] {
        for i in 0..ATTEMPTS {
            // Spread over the last 22 hours (inside the day window), oldest first.
            let at = now - time::Duration::milliseconds(((ATTEMPTS - i) * 800) as i64);
            let mut e = Event::new(
                &topic,
                "order created",
                serde_json::json!({"id": i, "email": "buyer@example.com"}),
            );
            e.created_at = at - time::Duration::milliseconds(50);
            let d = Delivery::new(&e, w, 0);
            store.append(&e, std::slice::from_ref(&d)).expect("append");
            let mut after = d.clone();
            after.attempts = 1;
            after.state = DeliveryState::Delivered;
            let attempt = Attempt {
                id: uuid::Uuid::now_v7(),
                delivery_id: d.id,
                webhook_id: w,
                number: 1,
                created_at: at,
                duration_ms: i % 200,
                summary: "HTTP 200 OK".into(),
                success: true,
                request_method: "POST".into(),
                request_url: "https://crm.example/hooks".into(),
                request_headers: vec![("content-type".into(), "application/json".into())],
                request_body: "{\"id\":1042,\"email\":\"buyer@example.com\"}".into(),
                response_code: Some(200),
                response_message: "OK".into(),
                response_headers: vec![],
                response_body: "ok".into(),
            };
            let change = Recorded {
                before: d,
                after,
                attempt,
            };
            store.record_attempts(w, &[change], None).expect("record");
        }
    }
    let until = (unix_ms(now) / 60_000 + 1) * 60_000;
    let day = StatsWindow {
        since_ms: until - 86_400_000,
        bucket_ms: 60_000,
        buckets: 1440,
    };
    let hour = StatsWindow {
        since_ms: until - 3_600_000,
        bucket_ms: 60_000,
        buckets: 60,
    };
    let mut group = c.benchmark_group("console");
    group.sample_size(10);
    group.bench_function("stats/day-100k-attempts", |b| {
        b.iter(|| {
            let s = store.attempt_stats(busy, &day).expect("stats");
            assert_eq!(s.totals.succeeded, ATTEMPTS);
        })
    });
    group.bench_function("stats/hour", |b| {
        b.iter(|| store.attempt_stats(busy, &hour).expect("stats"))
    });
    group.bench_function("stats/day-from-attempt-records", |b| {
        b.iter(|| {
            let mut n = 0;
            for d in store.deliveries_of(busy, usize::MAX).expect("deliveries") {
                n += store.attempts(d.id).expect("attempts").len();
            }
            assert_eq!(n as u64, ATTEMPTS);
        })
    });
    // The admin API's listing of a webhook's deliveries, page 1 of 20, over its 100k: as it
    // reads now (states counted up to 10,000, the page's records in full), counting every
    // match (as before 2026-12-02), with a state filter that matches none, and as it read
    // before 2026-12-01 (every record decoded and held, then cut).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let page = |state| hooktap::store::DeliveryQuery {
        state,
        offset: 0,
        limit: 20,
        count_up_to: hooktap::store::DELIVERY_COUNT_CAP,
    };
    group.bench_function("deliveries/page-1-of-100k", |b| {
        b.iter(|| {
            let p = rt
                .block_on(hooktap::store::Store::deliveries_page(
                    &store,
                    busy,
                    &page(None),
                ))
                .expect("page");
            assert_eq!((p.items.len(), p.total), (20, None));
        })
    });
    group.bench_function("deliveries/page-1-of-100k-counted-whole", |b| {
        let whole = hooktap::store::DeliveryQuery {
            count_up_to: u64::MAX,
            ..page(None)
        };
        b.iter(|| {
            let p = rt
                .block_on(hooktap::store::Store::deliveries_page(&store, busy, &whole))
                .expect("page");
            assert_eq!((p.items.len(), p.total), (20, Some(ATTEMPTS)));
        })
    });
    group.bench_function("deliveries/page-1-of-100k-failed-none", |b| {
        b.iter(|| {
            let p = rt
                .block_on(hooktap::store::Store::deliveries_page(
                    &store,
                    busy,
                    &page(Some(DeliveryState::Failed)),
                ))
                .expect("page");
            assert_eq!(p.total, Some(0));
        })
    });
    group.bench_function("deliveries/page-1-of-100k-whole-history", |b| {
        b.iter(|| {
            let all = store.deliveries_of(busy, usize::MAX).expect("deliveries");
            let total = all.len();
            let items: Vec<Delivery> = all.into_iter().take(20).collect();
            assert_eq!((items.len(), total as u64), (20, ATTEMPTS));
        })
    });
    // The pending count and oldest age of a webhook with a backlog: every metrics scrape and
    // every refresh of the console's overview and webhook page asks for it.
    group.bench_function("queue-stats/backlog-100k", |b| {
        b.iter(|| {
            let s = rt
                .block_on(hooktap::store::Store::queue_stats(&store, backlog))
                .expect("stats");
            assert_eq!(s.pending as u64, ATTEMPTS);
        })
    });
    group.bench_function("search/10k-events-no-match", |b| {
        let q = EventQuery {
            text: Some("nowhere@example.org".into()),
            limit: 20,
            ..EventQuery::default()
        };
        b.iter(|| assert!(store.events_page(&q).expect("search").is_empty()))
    });
    group.finish();
}

fn config() -> Criterion {
    // Short: the whole file runs in about a minute on 2 cores.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = routing, payload, expressions, signing, store, webhook_settings, console
}
criterion_main!(benches);
