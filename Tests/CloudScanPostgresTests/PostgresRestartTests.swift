import CloudScanPostgres
import CloudScanTestSupport
import Foundation
import Testing

/// Restarts the chaos cluster (port 5433), which only tests holding its lock use.
@Suite("PostgresClient across a server restart (chaos cluster)", .serialized, .chaosCluster)
struct PostgresRestartTests {
    @Test("the pool reconnects after `pg_ctlcluster … restart -m immediate`")
    func reconnectAfterImmediateRestart() async throws {
        let configuration = TestDatabase(schema: "public").ownerConfiguration(
            maximumConnections: 2, port: TestDatabase.chaosPort)
        try await TestDatabase.withClient(configuration) { client in
            let before = try await client.query("SELECT pg_backend_pid()").single().decode(Int32.self, at: 0)
            let postmasterBefore = try await client.query("SELECT pg_postmaster_start_time()").single()
                .decode(Date.self, at: 0)

            let status = try await runCommand(["pg_ctlcluster", "15", "chaos", "restart", "-m", "immediate"])
            #expect(status == 0, "pg_ctlcluster 15 chaos restart -m immediate failed")

            // The idle session is dead; the next lease notices and opens a new one.
            let deadline = ContinuousClock.now + .seconds(30)
            var after: (Int32, Date)?
            var failures = 0
            while after == nil, ContinuousClock.now < deadline {
                do {
                    let row = try await client.query("SELECT pg_backend_pid(), pg_postmaster_start_time()").single()
                    after = (try row.decode(Int32.self, at: 0), try row.decode(Date.self, at: 1))
                } catch {
                    failures += 1
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            let (pid, postmasterAfter) = try #require(after)
            #expect(pid != before)
            #expect(postmasterAfter > postmasterBefore, "the server really restarted")
            #expect(failures == 0, "a restart that finished before the query should cost no failed query")
        }
    }
}
