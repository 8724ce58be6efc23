import CloudScanCore
import CloudScanMetrics
import Foundation
import Logging
import Synchronization
import Testing

@Suite("trace context and JSON logs")
struct TelemetryTests {
    @Test("traceparent: W3C valid ones parsed, invalid ones refused, children keep the trace")
    func traceparent() throws {
        let parsed = try #require(TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        #expect(parsed.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(parsed.spanID == "00f067aa0ba902b7")
        #expect(parsed.traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        let child = parsed.child()
        #expect(child.traceID == parsed.traceID && child.spanID != parsed.spanID && child.spanID.count == 16)
        // A later version may carry more fields; version 00 may not.
        #expect(TraceContext(traceparent: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") != nil)
        for invalid in [
            "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            #expect(TraceContext(traceparent: invalid) == nil, "\(invalid)")
        }
        let root = TraceContext.root()
        #expect(TraceContext(traceparent: root.traceparent) == root)
    }

    @Test("a JSON log line: one object a line, the task's context and trace, escapes")
    func jsonLine() async throws {
        let lines = Mutex<[String]>([])
        var logger = Logger(label: "cloudscan.test") { label in
            JSONLogHandler(label: label, metadataProvider: FleetLogging.metadataProvider) { line in
                lines.withLock { $0.append(line) }
            }
        }
        logger[metadataKey: "role"] = "dispatcher"
        let trace = TraceContext.root()
        await LogContext.with(["scan_id": "s-1", "organization_id": "o-1"], trace: trace) {
            logger.info("quote \" and\nnewline \u{1}", metadata: ["attempt": "2", "list": ["a", "b"]])
        }
        // Fields learned partway (the caller's organization, after authentication) join later lines.
        await LogContext.$late.withValue(LogContext.Late()) {
            logger.info("before")
            LogContext.learn("organization_id", "o-2")
            logger.info("after")
        }
        logger.warning("outside")
        let written = lines.withLock { $0 }
        #expect(written.count == 4 && written.allSatisfy { $0.hasSuffix("}\n") && $0.filter { $0 == "\n" }.count == 1 })
        let first = try #require(try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as? [String: Any])
        #expect(first["msg"] as? String == "quote \" and\nnewline \u{1}")
        #expect(first["level"] as? String == "info" && first["logger"] as? String == "cloudscan.test")
        #expect(first["scan_id"] as? String == "s-1" && first["organization_id"] as? String == "o-1")
        #expect(first["trace_id"] as? String == trace.traceID && first["span_id"] as? String == trace.spanID)
        #expect(first["attempt"] as? String == "2" && first["list"] as? [String] == ["a", "b"])
        #expect(first["role"] as? String == "dispatcher")
        #expect((first["ts"] as? String).map { RFC3339.date(from: $0) != nil } == true)
        let before = try #require(try JSONSerialization.jsonObject(with: Data(written[1].utf8)) as? [String: Any])
        let after = try #require(try JSONSerialization.jsonObject(with: Data(written[2].utf8)) as? [String: Any])
        #expect(before["organization_id"] == nil && after["organization_id"] as? String == "o-2")
        let second = try #require(try JSONSerialization.jsonObject(with: Data(written[3].utf8)) as? [String: Any])
        #expect(second["scan_id"] == nil && second["trace_id"] == nil && second["level"] as? String == "warning")
    }
}
