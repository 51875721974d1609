use super::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_traceparent_is_joined() {
    let parent = remote_parent(Some(PARENT), None).expect("valid");
    assert_eq!(
        parent.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("test value")
    );
    assert_eq!(
        parent.span_id(),
        SpanId::from_hex("00f067aa0ba902b7").expect("test value")
    );
    assert!(parent.is_sampled());
    assert!(parent.is_remote());
    let unsampled = remote_parent(
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        None,
    )
    .expect("valid");
    assert!(!unsampled.is_sampled());
    // A later version may append fields; its first four are read.
    let later = remote_parent(
        Some("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever"),
        None,
    );
    assert!(later.is_some());
}

#[test]
fn anything_else_is_ignored() {
    let bad = [
        "",
        "00",
        // upper case hex
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        // all-zero ids
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        // version ff, version 00 with a tail, a later version glued to a tail
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        // separators, lengths, non-hex, non-ASCII
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // two headers merged with a comma
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01,00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ];
    for text in bad {
        assert!(remote_parent(Some(text), None).is_none(), "{text:?}");
    }
    assert!(remote_parent(None, Some("a=b")).is_none());
    let long = format!(
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
        "a".repeat(300)
    );
    assert!(remote_parent(Some(&long), None).is_none());
}

#[test]
fn only_the_sampled_flag_is_kept_and_a_bad_tracestate_is_dropped() {
    let parent = remote_parent(
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"),
        Some("vendor=value,other=1"),
    )
    .expect("valid");
    assert_eq!(parent.trace_flags(), TraceFlags::SAMPLED);
    assert_eq!(parent.trace_state().get("vendor"), Some("value"));
    let parent = remote_parent(Some(PARENT), Some("not a list member")).expect("still joined");
    assert_eq!(parent.trace_state().header(), "");
    let long = format!("vendor={}", "a".repeat(600));
    let parent = remote_parent(Some(PARENT), Some(&long)).expect("still joined");
    assert_eq!(parent.trace_state().header(), "");
}

fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, OtelError> {
    Settings::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_string())
    })
}

#[test]
fn tracing_is_off_unless_the_otlp_exporter_is_named() {
    assert_eq!(settings(&[]).expect("test value"), None);
    assert_eq!(
        settings(&[("OTEL_TRACES_EXPORTER", "none")]).expect("test value"),
        None
    );
    assert_eq!(
        settings(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_SDK_DISABLED", "true")
        ])
        .expect("test value"),
        None
    );
    let on = settings(&[("OTEL_TRACES_EXPORTER", "otlp")])
        .expect("test value")
        .expect("on");
    assert_eq!(
        on,
        Settings {
            protocol: Protocol::HttpProtobuf,
            sampler: SamplerSetting::ParentBased(ParentlessRoot::AlwaysOn),
            service_name: Some("tollgate".into()),
            endpoint: None,
        }
    );
}

#[test]
fn settings_follow_the_standard_variables() {
    let on = settings(&[
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod, service.name=authz",
        ),
    ])
    .expect("test value")
    .expect("on");
    assert_eq!(on.protocol, Protocol::Grpc);
    assert_eq!(
        on.sampler,
        SamplerSetting::ParentBased(ParentlessRoot::Ratio(0.25))
    );
    assert_eq!(on.service_name, None);
    let named = settings(&[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_SERVICE_NAME", "x")])
        .expect("test value");
    assert_eq!(named.expect("test value").service_name, None);
}

#[test]
fn bad_values_are_errors() {
    let otlp = ("OTEL_TRACES_EXPORTER", "otlp");
    let cases: [(&[(&str, &str)], &str); 9] = [
        (
            &[otlp, ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector")],
            "endpoint",
        ),
        (
            &[
                otlp,
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317"),
            ],
            "endpoint",
        ),
        (&[("OTEL_TRACES_EXPORTER", "zipkin")], "exporter"),
        (
            &[otlp, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "protocol",
        ),
        (
            &[otlp, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "GRPC")],
            "protocol",
        ),
        (&[otlp, ("OTEL_TRACES_SAMPLER", "jaeger_remote")], "sampler"),
        (
            &[
                otlp,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            "sampler_arg",
        ),
        (
            &[
                otlp,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "NaN"),
            ],
            "sampler_arg",
        ),
        (&[otlp, ("OTEL_SDK_DISABLED", "yes")], "disabled"),
    ];
    for (vars, reason) in cases {
        let error = settings(vars).expect_err("bad value");
        assert_eq!(error.reason(), reason, "{vars:?}: {error}");
    }
}

#[test]
fn without_a_traced_check_no_child_span_starts() {
    assert!(child("keys.fetch", SpanKind::Client).is_none());
}

#[test]
fn an_outbound_call_of_a_traced_check_names_its_own_span() {
    assert_eq!(outgoing(), None, "no traced check, no trace context sent");
    let provider = SdkTracerProvider::builder().build();
    let tracing = Tracing {
        tracer: provider.tracer("tollgate"),
        provider,
    };
    let parent = remote_parent(Some(PARENT), Some("vendor=abc")).expect("parent");
    let check = tracing.check_span("grpc", Some(parent.clone()));
    let _in_check = check.clone().attach();
    let fetch = child("keys.fetch", SpanKind::Client).expect("a child span");
    let _in_fetch = fetch.clone().attach();
    let fetch_span = fetch.span().span_context().span_id();
    let (traceparent, tracestate) = outgoing().expect("a traced call");
    assert_eq!(
        traceparent,
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{fetch_span}-01"),
        "the caller's trace, the call's own span, the caller's sampled flag"
    );
    assert_ne!(fetch_span, check.span().span_context().span_id());
    assert_eq!(tracestate.as_deref(), Some("vendor=abc"));
    // What tollgate sends, it would read back as the same trace.
    let sent = remote_parent(Some(&traceparent), tracestate.as_deref()).expect("valid");
    assert_eq!(sent.trace_id(), parent.trace_id());
    assert_eq!(sent.span_id(), fetch_span);
}
