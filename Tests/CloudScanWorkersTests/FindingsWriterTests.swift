import CloudScanAMQP
import CloudScanCore
import CloudScanPostgres
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Testing

@Suite("findings writer (live PostgreSQL and RabbitMQ)")
struct FindingsWriterTests {
    @Test("the same findings message delivered twice: its rows once, the scan's counters once")
    func duplicateDelivery() async throws {
        try await WritersHarness.run("fwdup") { h in
            let scan = try await h.dispatchedScan()
            let batch = h.batch(scan, index: 0, findings: (0..<120).map { WritersHarness.finding($0) })
            try await h.publish(batch)
            #expect(try await h.eventually { try await h.findingsCount(scan) == 120 })
            try await h.publish(batch)  // a redelivery or a runner that published again
            let second = h.batch(scan, index: 1, findings: [WritersHarness.finding(500, severity: .low)])
            try await h.publish(second)  // behind the duplicate in the queue: once it is in, so is the duplicate
            #expect(try await h.eventually { try await h.findingsCount(scan) == 121 })
            let state = try await h.scanState(scan)
            #expect(state.counted == 121, "the counters count inserted rows only")
            #expect(h.findingsWriter!.statistics.duplicates >= 120)
            #expect(try await h.findingsCount(scan) == 121)
        }
    }

    @Test(
        "a forged runner token, another organization's scan, a mismatched header: dead-lettered with a reason, nothing written"
    )
    func forgedAndForeign() async throws {
        try await WritersHarness.run("fwforge") { h in
            let mine = try await h.dispatchedScan()
            let theirs = try await h.dispatchedScan(organization: h.other)
            let rows = [WritersHarness.finding(1)]
            // A token made up by the sender.
            try await h.publish(
                h.batch(mine, index: 0, findings: rows, token: "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
            // A runner of organization A writing into B's scan with A's token for its own scan.
            try await h.publish(
                h.batch(theirs, index: 0, findings: rows, organization: h.organization, token: h.token(mine)))
            // Even a token minted for (B's scan, organization A) — as if the secret leaked — finds
            // no such scan in A: row-level security hides B's scan.
            try await h.publish(
                h.batch(
                    theirs, index: 1, findings: rows, organization: h.organization,
                    token: h.token(theirs, organization: h.organization)))
            // The header names another organization than the body.
            try await h.publish(h.batch(mine, index: 1, findings: rows), headerOrganization: h.other)
            let dead = try await h.deadLetters("cloudscan.findings.ingest", count: 4)
            let reasons = dead.map(\.1)
            #expect(dead.count == 4, "\(dead)")
            #expect(reasons.filter { $0.contains("runner token does not match") }.count == 2, "\(reasons)")
            #expect(reasons.contains { $0.contains("does not exist in organization") }, "\(reasons)")
            #expect(reasons.contains { $0.contains("x-organization-id") }, "\(reasons)")
            #expect(try await h.findingsCount(mine) == 0)
            #expect(try await h.findingsCount(theirs, organization: h.other) == 0)
            #expect(try await h.scanState(theirs, organization: h.other).counted == 0)
        }
    }

    @Test(
        "an invalid message among valid ones: only it is dead-lettered (its reason names the field), the rest is written"
    )
    func invalidAmongValid() async throws {
        try await WritersHarness.run("fwbad") { h in
            let scan = try await h.dispatchedScan()
            try await h.publish(h.batch(scan, index: 0, findings: (0..<10).map { WritersHarness.finding($0) }))
            var bad = h.batch(scan, index: 1, findings: [WritersHarness.finding(20)])
            var body = String(decoding: try MessageCoding.encoder().encode(bad), as: UTF8.self)
            body = body.replacingOccurrences(of: "\"severity\":\"high\"", with: "\"severity\":\"urgent\"")
            try await h.publish(bad, body: Array(body.utf8))
            bad.batchIndex = 2
            try await h.publish(bad, body: Array("{not json".utf8))
            try await h.publish(h.batch(scan, index: 3, findings: (30..<40).map { WritersHarness.finding($0) }))
            #expect(try await h.eventually { try await h.findingsCount(scan) == 20 })
            let dead = try await h.deadLetters("cloudscan.findings.ingest", count: 2)
            #expect(dead.map(\.1).contains { $0.contains("findings[0].severity") }, "\(dead)")
            #expect(dead.map(\.1).contains { $0.contains("not JSON") }, "\(dead)")
            #expect(try await h.scanState(scan).counted == 20)
        }
    }

    @Test(
        "every field is stored as sent: escapes, non-ASCII, CWE lists, absent and zero numbers, raw as jsonb (\\u0000 and unpaired surrogates → U+FFFD); a refused message is dead-lettered byte for byte"
    )
    func fieldsAsSent() async throws {
        try await WritersHarness.run("fwfields") { h in
            let scan = try await h.dispatchedScan()
            let envelope =
                #""scan_id":"\#(scan.uuidString.lowercased())","organization_id":"\#(h.organization.uuidString.lowercased())","attempt":1,"batch_index":0,"runner_token":"\#(h.token(scan))""#
            let findings = [
                #"{"scanner":"semgrep","rule_id":"r\u00e9gle","severity":"critical","title":"Tab\there \"quoted\" back\\slash caf\u00e9 😀 \ud83d\ude00 nul\u0000 lone\ud800","message":"line1\nline2\r\/","path":"src/ä/b.py","line":0,"column":7,"cwe":["CWE-79","CWE-89"],"fingerprint":"fp-1","raw":{"b":[1,2.5,null,true,{"x":"\u0000"}],"a":"\\u0000 kept","s":"\udc00"}}"#,
                #"{"scanner":"s","rule_id":"r","severity":"info","title":"minimal","fingerprint":"fp-2"}"#,
                #"{ "scanner" : "s" , "rule_id":"r","severity":"low","title":"empty cwe","fingerprint":"fp-3","cwe":[],"message":"","path":"","line":2147483647}"#,
            ]
            let body = Array("{\(envelope),\"findings\":[\(findings.joined(separator: ",\n"))]}".utf8)
            try await h.publish(h.batch(scan, index: 0, findings: []), body: body)
            #expect(try await h.eventually { try await h.findingsCount(scan) == 3 })
            let rows = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query(
                    """
                    SELECT fingerprint, scanner, rule_id, severity, title, message, path, line, "column", cwe,
                           raw = '{"a":"\\\\u0000 kept","b":[1,2.5,null,true,{"x":"\\ufffd"}],"s":"\\ufffd"}'::jsonb,
                           raw IS NULL
                    FROM findings WHERE scan_id = \(scan) ORDER BY fingerprint
                    """
                ).map { row in
                    (
                        try row.decode(String.self, at: 0), try row.decode(String.self, at: 1),
                        try row.decode(String.self, at: 2), try row.decode(String.self, at: 3),
                        try row.decode(String.self, at: 4), try row.decode(String.self, at: 5),
                        try row.decode(String.self, at: 6), try row.decode(Int?.self, at: 7),
                        try row.decode(Int?.self, at: 8), try row.decode([String].self, at: 9),
                        try row.decode(Bool?.self, at: 10), try row.decode(Bool.self, at: 11)
                    )
                }
            }
            try #require(rows.count == 3)
            let first = rows[0]
            #expect(first.0 == "fp-1" && first.1 == "semgrep" && first.2 == "régle" && first.3 == "critical")
            #expect(first.4 == "Tab\there \"quoted\" back\\slash café 😀 😀 nul\u{FFFD} lone\u{FFFD}", "\(first.4)")
            #expect(first.5 == "line1\nline2\r/" && first.6 == "src/ä/b.py")
            #expect(first.7 == 0 && first.8 == 7 && first.9 == ["CWE-79", "CWE-89"])
            #expect(first.10 == true, "raw as jsonb, with what jsonb refuses replaced and an escaped backslash kept")
            let second = rows[1]
            #expect(second.0 == "fp-2" && second.4 == "minimal" && second.5 == "" && second.6 == "")
            #expect(second.7 == nil && second.8 == nil && second.9 == [] && second.11)
            let third = rows[2]
            #expect(third.0 == "fp-3" && third.1 == "s" && third.3 == "low" && third.7 == 2_147_483_647)
            #expect(third.8 == nil && third.9 == [] && third.11)
            let state = try await h.scanState(scan)
            #expect(state.counted == 3)
            // A message refused after parsing (its scan is not this organization's) goes to the
            // dead-letter queue exactly as it came.
            let stranger = UUID()
            let refused = Array(
                String(decoding: body, as: UTF8.self).replacingOccurrences(
                    of: scan.uuidString.lowercased(), with: stranger.uuidString.lowercased()
                ).replacingOccurrences(of: h.token(scan), with: h.token(stranger)).utf8)
            try await h.publish(h.batch(stranger, index: 0, findings: []), body: refused)
            let dead = try await h.deadLetters("cloudscan.findings.ingest", count: 1)
            try #require(dead.count == 1)
            #expect(dead[0].1.contains("does not exist"), "\(dead[0].1)")
            #expect(dead[0].2 == refused, "the dead letter carries the body as received")
        }
    }

    @Test(
        "PostgreSQL down mid-stream: the writer keeps its flush and retries with backoff, dead-letters nothing; after the restart every finding is in, once",
        .chaosCluster)
    func databaseOutage() async throws {
        try await WritersHarness.run("fwpgdown", postgresPort: TestDatabase.chaosPort) { h in
            let scan = try await h.dispatchedScan()
            try await h.publish(h.batch(scan, index: 0, findings: (0..<50).map { WritersHarness.finding($0) }))
            #expect(try await h.eventually { try await h.findingsCount(scan) == 50 })
            let writer = try #require(h.findingsWriter)
            let retriesBefore = writer.statistics.retries
            #expect(try await runCommand(["pg_ctlcluster", "15", "chaos", "stop", "-m", "immediate"]) == 0)
            var sawRetries = false
            do {
                for index in 1...6 {
                    let rows = (index * 50..<(index + 1) * 50).map { WritersHarness.finding($0) }
                    try await h.publish(h.batch(scan, index: index, findings: rows))
                }
                sawRetries = try await h.eventually(20) { writer.statistics.retries >= retriesBefore + 3 }
                try await Task.sleep(for: .seconds(1))
            } catch {
                _ = try? await runCommand(["pg_ctlcluster", "15", "chaos", "start"])
                throw error
            }
            #expect(sawRetries, "the writer's flushes failed while PostgreSQL was down, and were retried")
            #expect(writer.statistics.deadLettered == 0, "an outage is not the messages' fault")
            #expect(try await runCommand(["pg_ctlcluster", "15", "chaos", "start"]) == 0)
            #expect(try await h.eventually(40) { (try? await h.findingsCount(scan)) == 350 })
            #expect(try await h.findingsCount(scan) == 350)
            #expect(try await h.scanState(scan).counted == 350, "the counters count each finding once")
            let dead = try await h.deadLetters("cloudscan.findings.ingest", count: 1, within: 3)
            #expect(dead.isEmpty, "nothing was dead-lettered: \(dead.map(\.1))")
            #expect(writer.statistics.deadLettered == 0)
        }
    }

    @Test("the runner's completed report and its findings batches: whichever comes last completes the scan")
    func completionJoin() async throws {
        try await WritersHarness.run("fwjoin") { h in
            // Report first, batches after: the findings writer completes it.
            let first = try await h.dispatchedScan()
            try await h.publish(h.report(first, .started))
            try await h.publish(h.report(first, .completed, batches: 2))
            #expect(try await h.eventually { try await h.scanState(first).status == "running" })
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await h.scanState(first).status == "running", "waits for its batches")
            try await h.publish(h.batch(first, index: 0, findings: [WritersHarness.finding(1)]))
            try await h.publish(h.batch(first, index: 1, findings: [WritersHarness.finding(2)]))
            #expect(try await h.eventually { try await h.scanState(first).status == "completed" })
            let state = try await h.scanState(first)
            #expect(state.counted == 2)
            #expect(state.events == ["queued", "dispatched", "running", "completed"])

            // Batches first, report after: the status writer completes it.
            let second = try await h.dispatchedScan()
            try await h.publish(h.batch(second, index: 0, findings: [WritersHarness.finding(3)]))
            #expect(try await h.eventually { try await h.findingsCount(second) == 1 })
            try await h.publish(h.report(second, .completed, batches: 1))
            #expect(try await h.eventually { try await h.scanState(second).status == "completed" })
            // No started report at all: the timeline still reads in order.
            #expect(try await h.scanState(second).events == ["queued", "dispatched", "running", "completed"])

            // scan.completed is in the outbox with the counts.
            let payload = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query(
                    "SELECT payload::text FROM outbox WHERE routing_key = 'scan.completed' AND correlation_id = \(second.uuidString.lowercased())"
                ).single().decode(String.self, at: 0)
            }
            let event = try MessageCoding.decoder().decode(ScanEventMessage.self, from: Data(payload.utf8))
            #expect(event.status == .completed)
            #expect(event.counts?["high"] == 1)
        }
    }

    @Test("a refused batch of a runner whose token checks out still counts: the scan completes, partial")
    func refusedBatchCounts() async throws {
        try await WritersHarness.run("fwref") { h in
            let scan = try await h.dispatchedScan()
            var bad = h.batch(scan, index: 0, findings: [WritersHarness.finding(1)])
            var body = String(decoding: try MessageCoding.encoder().encode(bad), as: UTF8.self)
            body = body.replacingOccurrences(of: "\"title\":\"Finding 1\"", with: "\"title\":\"\"")
            try await h.publish(bad, body: Array(body.utf8))
            bad.batchIndex = 1
            try await h.publish(h.batch(scan, index: 1, findings: [WritersHarness.finding(2)]))
            try await h.publish(h.report(scan, .completed, batches: 2))
            #expect(try await h.eventually { try await h.scanState(scan).status == "completed" })
            let reason = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query(
                    "SELECT reason, details->>'refused_batches' FROM scan_events WHERE scan_id = \(scan) AND to_status = 'completed'"
                ).single()
            }
            #expect(try reason.decode(String.self, at: 0) == "partial")
            #expect(try reason.decode(String.self, at: 1) == "1")
            #expect(try await h.findingsCount(scan) == 1)
        }
    }
}
