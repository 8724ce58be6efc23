import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanTestSupport
import Foundation
import Testing

@Suite("Local process backend")
struct LocalProcessBackendTests {
    static func assignment(timeout: Int = 60) -> RunnerAssignment {
        RunnerAssignment(
            scanID: UUID(), organizationID: UUID(), attempt: 1, scanTypes: [.sast, .secrets],
            artifactURL: "file:///tmp/a.tar.gz", timeoutSeconds: timeout, runnerToken: "v1.token")
    }

    func backend(_ script: String, concurrent: Int = 2, grace: Int = 0, kill: Duration = .milliseconds(500))
        -> LocalProcessBackend
    {
        LocalProcessBackend(
            configuration: .init(
                command: ["/bin/sh", "-c", script], maximumConcurrent: concurrent, deadlineGraceSeconds: grace,
                killGrace: kill, environment: ["CLOUDSCAN_BROKER_URL": "amqp://runner@localhost/"]),
            logger: TestDatabase.logger("local"))
    }

    func next(_ backend: LocalProcessBackend) async -> LocalProcessBackend.Outcome? {
        for await outcome in backend.outcomes { return outcome }
        return nil
    }

    @Test("the runner gets the contract's environment; its exit status is the outcome; a second start does nothing")
    func environmentAndExit() async throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("env-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        let backend = backend("env > \(out.path); echo \"PWD=$(pwd)\" >> \(out.path); exit 3")
        let assignment = Self.assignment()
        try await backend.start(assignment)
        try await backend.start(assignment)
        let outcome = await next(backend)
        #expect(outcome?.ending == .exited(3))
        #expect(outcome?.scanID == assignment.scanID)
        let env = try String(contentsOf: out, encoding: .utf8)
        #expect(env.contains("CLOUDSCAN_SCAN_ID=\(assignment.scanID.uuidString.lowercased())"))
        #expect(env.contains("CLOUDSCAN_SCAN_TYPES=sast,secrets"))
        #expect(env.contains("CLOUDSCAN_RUNNER_TOKEN=v1.token"))
        #expect(env.contains("CLOUDSCAN_BROKER_URL=amqp://runner@localhost/"))
        #expect(env.contains("CLOUDSCAN_TIMEOUT_SECONDS=60"))
        #expect(env.contains("PWD=\(backend.configuration.scratchRoot)/"), "runs in its own scratch directory")
        try await backend.start(assignment)  // an ended attempt is not run again
        try await Task.sleep(for: .milliseconds(200))
        #expect(backend.counts.running == 0)
    }

    @Test("past its deadline the runner is stopped (SIGTERM, then SIGKILL if it ignores it)")
    func deadline() async throws {
        let backend = backend("trap '' TERM; sleep 30", kill: .milliseconds(300))
        try await backend.start(Self.assignment(timeout: 1))
        let outcome = await next(backend)
        #expect(outcome?.ending == .timedOut)
    }

    @Test("a cancel reaches the runner's children too (its process group)")
    func processGroup() async throws {
        let marker = "31.\(Int.random(in: 100...999))"
        let backend = backend("sleep \(marker) & sleep \(marker) & wait")
        let assignment = Self.assignment()
        try await backend.start(assignment)
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await runCommand(["pgrep", "-f", "sleep \(marker)"]) == 0, "the children run")
        try await backend.stop(scanID: assignment.scanID, attempt: 1)
        #expect(await next(backend)?.ending == .canceled)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await runCommand(["pgrep", "-f", "sleep \(marker)"]) == 1, "no child outlives the runner")
    }

    @Test("cancel stops a running runner and drops a waiting one; at most N run at once")
    func cancelAndConcurrency() async throws {
        let backend = backend("sleep 30", concurrent: 2)
        let assignments = (0..<5).map { _ in Self.assignment() }
        for assignment in assignments { try await backend.start(assignment) }
        try await Task.sleep(for: .milliseconds(200))
        #expect(backend.counts.running == 2)
        #expect(backend.counts.waiting == 3)
        try await backend.stop(scanID: assignments[4].scanID, attempt: 1)  // waiting
        try await backend.stop(scanID: assignments[0].scanID, attempt: 1)  // running
        var endings: [UUID: LocalProcessBackend.Outcome.Ending] = [:]
        for await outcome in backend.outcomes {
            endings[outcome.scanID] = outcome.ending
            if endings.count == 2 { break }
        }
        #expect(endings[assignments[4].scanID] == .canceled)
        #expect(endings[assignments[0].scanID] == .canceled)
        try await Task.sleep(for: .milliseconds(200))
        #expect(backend.counts.running == 2, "a waiting runner took the freed slot")
        #expect(backend.counts.waiting == 1)
        for assignment in assignments { try await backend.stop(scanID: assignment.scanID, attempt: 1) }
    }
}
