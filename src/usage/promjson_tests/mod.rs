use super::*;

fn rates(entries: &[(&str, f64)]) -> Rates {
    entries.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
}

fn vector(series: &str) -> Vec<u8> {
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{series}]}}}}"#).into_bytes()
}

#[test]
fn sums_series_by_key_and_skips_the_rest() {
    let body = vector(
        r#"{"metric":{"api_key":"checkout","code":"200"},"value":[1700000000.123,"12.5"]},
           {"metric":{"api_key":"checkout","code":"429"},"value":[1700000000.123,"0.5"]},
           {"metric":{"api_key":"search"},"value":[1700000000,"1e+03"]},
           {"metric":{"code":"200"},"value":[1700000000,"99"]},
           {"metric":{"api_key":""},"value":[1700000000,"7"]},
           {"metric":{"api_key":"nan"},"value":[1700000000,"NaN"]},
           {"metric":{"api_key":"inf"},"value":[1700000000,"+Inf"]},
           {"metric":{"api_key":"neg"},"value":[1700000000,"-Inf"]},
           {"metric":{"api_key":"neg2"},"value":[1700000000,"-3"]},
           {"metric":{"api_key":"hist"},"histogram":[1700000000,{"count":"3","sum":"1"}]},
           {"value":[1700000000,"5"]}"#,
    );
    let got = parse_query_response(&body, "api_key").unwrap();
    assert_eq!(got, rates(&[("checkout", 13.0), ("search", 1000.0)]));
    // Another label picks other series.
    assert_eq!(parse_query_response(&body, "code").unwrap(), rates(&[("200", 111.5), ("429", 0.5)]));
}

#[test]
fn empty_vector_is_an_empty_map() {
    assert_eq!(parse_query_response(&vector(""), "api_key").unwrap(), Rates::new());
    // Warnings and unknown fields are ignored.
    let body = br#"{"status":"success","warnings":["w"],"data":{"resultType":"vector","result":[]},"x":1}"#;
    assert_eq!(parse_query_response(body, "api_key").unwrap(), Rates::new());
}

#[test]
fn api_error_is_query_failed_with_its_type_and_no_message() {
    let body = br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: MARKER-7f3a"}"#;
    let err = parse_query_response(body, "api_key").unwrap_err();
    assert_eq!(err.reason(), "QueryFailed");
    assert!(matches!(err, SourceError::Query { error_type: "bad_data", .. }), "{err:?}");
    assert!(!err.to_string().contains("MARKER") && !format!("{err:?}").contains("MARKER"), "{err}");

    // An error type Prometheus does not define is not quoted either.
    let body = br#"{"status":"error","errorType":"MARKER-7f3a","error":"x"}"#;
    let err = parse_query_response(body, "api_key").unwrap_err();
    assert!(matches!(err, SourceError::Query { error_type: "unknown", .. }), "{err:?}");
}

#[test]
fn nothing_of_the_body_is_quoted() {
    let marker = "MARKER-7f3a";
    let bodies = [
        format!(r#"{{"status":"success","data":{{"resultType":"{marker}","result":[]}}}}"#),
        format!(r#"{{"status":"{marker}"}}"#),
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"api_key":"a"}},"value":[1,"{marker}"]}}]}}}}"#
        ),
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":"{marker}"}}}}"#),
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[1,"{marker}"]}}}}"#),
        format!(r#"{{"{marker}""#),
        marker.to_owned(),
    ];
    for body in bodies {
        let err = parse_query_response(body.as_bytes(), "api_key").unwrap_err();
        assert!(!err.to_string().contains(marker) && !format!("{err:?}").contains(marker), "{body}: {err}");
    }
}

#[test]
fn series_and_keys_are_capped() {
    let many: Vec<String> =
        (0..20).map(|i| format!(r#"{{"metric":{{"api_key":"k{}"}},"value":[1,"1"]}}"#, i % 10)).collect();
    let body = vector(&many.join(","));
    let limits = |max_series, max_keys| Limits { max_series, max_keys, ..Limits::default() };
    assert_eq!(parse_query_response_limited(&body, "api_key", limits(20, 10)).unwrap().len(), 10);
    let err = parse_query_response_limited(&body, "api_key", limits(19, 10)).unwrap_err();
    assert_eq!(err, SourceError::TooManySeries { url: String::new(), limit: 19 });
    let err = parse_query_response_limited(&body, "api_key", limits(20, 9)).unwrap_err();
    assert_eq!(err, SourceError::TooManyKeys { url: String::new(), limit: 9 });
    assert_eq!(err.reason(), "TooManyKeys");
    // Series without the key count as series but not as keys.
    let unkeyed: Vec<String> = (0..20).map(|i| format!(r#"{{"metric":{{"other":"k{i}"}},"value":[1,"1"]}}"#)).collect();
    let body = vector(&unkeyed.join(","));
    assert!(parse_query_response_limited(&body, "api_key", limits(20, 1)).unwrap().is_empty());
    assert!(parse_query_response_limited(&body, "api_key", limits(19, 1)).is_err());
}

#[test]
fn result_before_result_type_is_read_too() {
    let body =
        br#"{"data":{"result":[{"value":[1,"2"],"metric":{"api_key":"a"}}],"resultType":"vector"},"status":"success"}"#;
    assert_eq!(parse_query_response(body, "api_key").unwrap(), rates(&[("a", 2.0)]));
    let body = br#"{"data":{"result":[1,"2"],"resultType":"scalar"},"status":"success"}"#;
    assert!(matches!(
        parse_query_response(body, "api_key"),
        Err(SourceError::NotAVector { result_type: "scalar", .. })
    ));
}

#[test]
fn results_other_than_an_instant_vector_are_rejected() {
    for (result_type, result) in [
        ("scalar", r#"[1700000000,"1"]"#),
        ("string", r#"[1700000000,"hello"]"#),
        ("matrix", r#"[{"metric":{"api_key":"a"},"values":[[1700000000,"1"]]}]"#),
    ] {
        let body = format!(r#"{{"status":"success","data":{{"resultType":"{result_type}","result":{result}}}}}"#);
        let err = parse_query_response(body.as_bytes(), "api_key").unwrap_err();
        assert_eq!(err.reason(), "QueryFailed", "{result_type}");
        assert!(err.is_permanent());
        let text = err.to_string();
        assert!(text.contains(result_type) && text.contains("instant vector"), "{text}");
    }
}

#[test]
fn garbage_is_an_error_never_a_panic_nor_an_echo() {
    let secret = "S".repeat(1000);
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"<html>502 Bad Gateway</html>".to_vec(),
        br#"{"status":"success""#.to_vec(),
        br#"{"status":"success"}"#.to_vec(),
        br#"{"status":"maybe","data":null}"#.to_vec(),
        br#"[1,2,3]"#.to_vec(),
        vector(r#"{"metric":{"api_key":"a"},"value":[1700000000,5]}"#),
        vector(r#"{"metric":{"api_key":"a"},"value":[1700000000,"five"]}"#),
        vector(r#"{"metric":{"api_key":"a"},"value":[1700000000]}"#),
        vector(r#"{"metric":{"api_key":5},"value":[1700000000,"1"]}"#),
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":"{secret}"}}}}"#).into_bytes(),
        format!(r#"{{"status":"{secret}"}}"#).into_bytes(),
    ];
    for body in bodies {
        let err = parse_query_response(&body, "api_key").unwrap_err();
        assert_eq!(err.reason(), "InvalidResponse", "{err}");
        let text = err.to_string();
        assert!(text.len() < 300 && !text.contains(&secret[..100]), "{text}");
    }
    // Every truncation of a valid answer is handled too.
    let body = vector(r#"{"metric":{"api_key":"a"},"value":[1700000000,"1"]}"#);
    for cut in 0..body.len() {
        assert!(parse_query_response(&body[..cut], "api_key").is_err());
    }
}
