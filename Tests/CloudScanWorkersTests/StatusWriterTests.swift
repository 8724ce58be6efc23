import CloudScanAMQP
import CloudScanCore
import CloudScanPostgres
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Testing

@Suite("status writer (live PostgreSQL and RabbitMQ)")
struct StatusWriterTests {
    @Test("reports out of order, late and duplicated never move a scan backwards")
    func reordering() async throws {
        try await WritersHarness.run("swreorder") { h in
            let scan = try await h.dispatchedScan()
            // completed overtakes started; then the late started, a heartbeat, a duplicate completed
            // and a late failed arrive.
            try await h.publish(h.report(scan, .completed, batches: 0))
            #expect(try await h.eventually { try await h.scanState(scan).status == "completed" })
            try await h.publish(h.report(scan, .started))
            try await h.publish(h.report(scan, .heartbeat))
            try await h.publish(h.report(scan, .completed, batches: 0))
            try await h.publish(h.report(scan, .failed, reason: "late"))
            // A marker behind them: once it is applied, so are they.
            let marker = try await h.dispatchedScan()
            try await h.publish(h.report(marker, .started))
            #expect(try await h.eventually { try await h.scanState(marker).status == "running" })
            try await Task.sleep(for: .milliseconds(300))
            let state = try await h.scanState(scan)
            #expect(state.status == "completed")
            #expect(state.events == ["queued", "dispatched", "running", "completed"])
            // The redelivered completed report is a duplicate (acked); the late started, heartbeat
            // and failed are a runner credential used after its scan ended: dead-lettered.
            let dead = try await h.deadLetters("cloudscan.status.ingest", count: 3)
            #expect(dead.count == 3 && dead.allSatisfy { $0.1.contains("a finished scan takes no more reports") })
        }
    }

    @Test("findings for a finished scan are dead-lettered; a redelivered batch it already has is not")
    func findingsAfterTheEnd() async throws {
        try await WritersHarness.run("swfinished") { h in
            let scan = try await h.dispatchedScan()
            try await h.publish(h.report(scan, .started))
            let first = h.batch(scan, index: 0, findings: [WritersHarness.finding(1)])
            try await h.publish(first)
            try await h.publish(h.report(scan, .completed, batches: 1))
            #expect(try await h.eventually { try await h.scanState(scan).status == "completed" })
            try await h.publish(first)  // a redelivery
            try await h.publish(h.batch(scan, index: 1, findings: [WritersHarness.finding(2)]))
            let dead = try await h.deadLetters("cloudscan.findings.ingest", count: 1)
            #expect(dead.count == 1 && dead[0].1.contains("finished scan takes no findings"), "\(dead)")
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await h.findingsCount(scan) == 1)
            #expect(try await h.deadLetters("cloudscan.findings.ingest", count: 1, within: 2).isEmpty)
        }
    }

    @Test("a report of an earlier attempt changes nothing of the current one")
    func earlierAttempt() async throws {
        try await WritersHarness.run("swattempt") { h in
            let scan = try await h.dispatchedScan(attempt: 2)
            try await h.publish(h.report(scan, .failed, attempt: 1, reason: "old runner died"))
            try await h.publish(h.report(scan, .completed, attempt: 1, batches: 0))
            try await h.publish(h.report(scan, .started, attempt: 2))
            #expect(try await h.eventually { try await h.scanState(scan).status == "running" })
            try await Task.sleep(for: .milliseconds(300))
            let state = try await h.scanState(scan)
            #expect(state.status == "running")
            #expect(state.events == ["queued", "dispatched", "running"])
        }
    }

    @Test("failed: the runner's reason on the scan, scan.failed in the outbox")
    func failed() async throws {
        try await WritersHarness.run("swfail") { h in
            let scan = try await h.dispatchedScan()
            try await h.publish(h.report(scan, .started))
            try await h.publish(h.report(scan, .failed, reason: "archive_path_escape"))
            #expect(try await h.eventually { try await h.scanState(scan).status == "failed" })
            let row = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query(
                    """
                    SELECT s.failure_reason, (SELECT count(*) FROM outbox o WHERE o.routing_key = 'scan.failed'
                                              AND o.correlation_id = \(scan.uuidString.lowercased()))
                    FROM scans s WHERE s.id = \(scan)
                    """
                ).single()
            }
            #expect(try row.decode(String.self, at: 0) == "archive_path_escape")
            #expect(try row.decode(Int.self, at: 1) == 1)
        }
    }

    @Test("a forged token or another organization's scan: dead-lettered, the scan untouched")
    func forged() async throws {
        try await WritersHarness.run("swforge") { h in
            let theirs = try await h.dispatchedScan(organization: h.other)
            try await h.publish(h.report(theirs, .failed, organization: h.other, reason: "x", token: "v1.nope"))
            try await h.publish(
                h.report(
                    theirs, .completed, organization: h.organization, batches: 0,
                    token: h.token(theirs, organization: h.organization)))
            let dead = try await h.deadLetters("cloudscan.status.ingest", count: 2)
            #expect(dead.count == 2)
            #expect(dead.map(\.1).contains { $0.contains("runner token does not match") }, "\(dead)")
            #expect(dead.map(\.1).contains { $0.contains("does not exist in organization") }, "\(dead)")
            #expect(try await h.scanState(theirs, organization: h.other).status == "dispatched")
        }
    }

    @Test(
        "hostile reports with a valid token (integers past PostgreSQL's, an AMQP timestamp past any date): dead-lettered with the field, and the writer lives on"
    )
    func hostileReports() async throws {
        try await WritersHarness.run("swhostile") { h in
            let scan = try await h.dispatchedScan()
            var huge = h.report(scan, .completed, batches: Int(Int32.max) + 1)
            try await h.publish(huge)
            huge = h.report(scan, .completed, batches: 0)
            huge.counts?.high = 1 << 40
            try await h.publish(huge)
            var scanners = h.report(scan, .completed, batches: 0)
            scanners.scanners = [.init(name: "semgrep", outcome: .ok, durationMS: Int.max, findings: 0)]
            try await h.publish(scanners)
            // Published by an outside client (pika), which writes any 64-bit timestamp: the copy
            // dead-lettered with it once trapped the writer converting it back.
            let script = """
                import pika, sys
                connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
                channel = connection.channel()
                channel.confirm_delivery()
                channel.basic_publish("cloudscan.status", "status.completed", b"{not json",
                    pika.BasicProperties(timestamp=2**64 - 1, message_id="far-future", type="status.report.v1",
                                         headers={"x-organization-id": sys.argv[2], "x-cloudscan-delays": "-1"}))
                connection.close()
                """
            let (status, output) = try await runCommandCapturingOutput([
                TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/python").path, "-c", script,
                h.brokerURL, h.organization.uuidString.lowercased(),
            ])
            #expect(status == 0, "\(output)")
            let dead = try await h.deadLetters("cloudscan.status.ingest", count: 4)
            let reasons = dead.map(\.1)
            #expect(reasons.contains { $0.contains("findings_batches") }, "\(reasons)")
            #expect(reasons.contains { $0.contains("counts") }, "\(reasons)")
            #expect(reasons.contains { $0.contains("scanners[0]") }, "\(reasons)")
            #expect(reasons.contains { $0.contains("not a JSON object") || $0.contains("invalid") }, "\(reasons)")
            // The writer is still there: a good report moves the scan.
            try await h.publish(h.report(scan, .started))
            #expect(try await h.eventually { try await h.scanState(scan).status == "running" })
        }
    }
}
