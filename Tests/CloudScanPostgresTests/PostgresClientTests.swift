import CloudScanPostgres
import CloudScanTestSupport
import Foundation
import Synchronization
import Testing

/// Integration tests against the live PostgreSQL; each test works in a schema of its own.
@Suite("PostgresClient (live server)")
struct PostgresClientTests {
    @Test("64 concurrent tasks share a pool of 4 sessions")
    func concurrentTasksOnSmallPool() async throws {
        try await TestDatabase.withSchema("pool") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 4)) { client in
                let results = try await withThrowingTaskGroup(of: (Int32, Int).self) { group in
                    for index in 0..<64 {
                        group.addTask {
                            let row = try await client.query(
                                "SELECT pg_backend_pid(), \(index)::int8 + 1, pg_sleep(0.02)::text"
                            ).single()
                            return (try row.decode(Int32.self, at: 0), try row.decode(Int.self, at: 1))
                        }
                    }
                    var all: [(Int32, Int)] = []
                    for try await result in group { all.append(result) }
                    return all
                }
                #expect(results.count == 64)
                #expect(Set(results.map(\.1)) == Set(1...64))
                let backends = Set(results.map(\.0))
                #expect(backends.count <= 4)
                #expect(backends.count >= 2, "tasks should have run on several sessions concurrently")
                let sessions = try await client.query(
                    "SELECT count(*)::int8 FROM pg_stat_activity WHERE pid = ANY(\(backends.map { String($0) })::int[])"
                ).single().decode(Int.self, at: 0)
                #expect(sessions == backends.count)
            }
        }
    }

    @Test("a transaction rolls back when its body throws, and commits when it returns")
    func transactionRollbackOnThrow() async throws {
        struct Boom: Error {}
        try await TestDatabase.withSchema("txn") { db in
            try await TestDatabase.withClient(db.ownerConfiguration()) { client in
                try await client.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
                await #expect(throws: Boom.self) {
                    try await client.withTransaction { connection in
                        try await connection.execute("INSERT INTO items VALUES (1, \("rolled back"))")
                        throw Boom()
                    }
                }
                try await client.withTransaction { connection in
                    try await connection.execute("INSERT INTO items VALUES (2, \("kept"))")
                }
                let rows = try await client.query("SELECT id, name FROM items ORDER BY id")
                #expect(rows.count == 1)
                #expect(try rows[0].decode(Int32.self, at: 0) == 2)
                #expect(try rows[0].decode(String.self, "name") == "kept")
            }
        }
    }

    @Test("a COMMIT of an aborted transaction is reported, not taken for success")
    func commitOfAbortedTransactionFails() async throws {
        try await TestDatabase.withSchema("commit") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                try await client.execute("CREATE TABLE items (id int PRIMARY KEY)")
                let error = await #expect(throws: PostgresError.self) {
                    try await client.withTransaction { connection in
                        try await connection.execute("INSERT INTO items VALUES (1)")
                        // A failing statement the body chooses to ignore aborts the transaction.
                        _ = try? await connection.execute("INSERT INTO items VALUES (1)")
                    }
                }
                #expect(error?.code == .commitFailed)
                let count = try await client.query("SELECT count(*) FROM items").single().decode(Int.self, at: 0)
                #expect(count == 0)
            }
        }
    }

    @Test("COPY FROM STDIN writes 100k rows, with text that needs escaping")
    func copy100kRows() async throws {
        try await TestDatabase.withSchema("copy") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                try await client.execute(
                    "CREATE TABLE bulk (n int8 PRIMARY KEY, label text, tags text[], seen timestamptz, note text)")
                let awkward = "tab\there\nnewline \\ backslash \\N not null"
                let copied = try await client.withConnection { connection in
                    try await connection.copyFrom("COPY bulk (n, label, tags, seen, note) FROM STDIN") { writer in
                        for n in 0..<100_000 {
                            try writer.writeRow([
                                n, "row-\(n)", ["a", "b,c"], Date(timeIntervalSince1970: 1_700_000_000),
                                n % 2 == 0 ? awkward : nil,
                            ])
                        }
                    }
                }
                #expect(copied == 100_000)
                let row = try await client.query(
                    "SELECT count(*), sum(n), count(note), min(tags::text), min(seen) FROM bulk"
                ).single()
                #expect(try row.decode(Int.self, at: 0) == 100_000)
                #expect(try row.decode(String.self, at: 1) == "4999950000")
                #expect(try row.decode(Int.self, at: 2) == 50_000)
                #expect(try row.decode(String.self, at: 3) == "{a,\"b,c\"}")
                #expect(try row.decode(Date.self, at: 4) == Date(timeIntervalSince1970: 1_700_000_000))
                let note = try await client.query("SELECT note FROM bulk WHERE n = 42").single()
                #expect(try note.decode(String.self, at: 0) == awkward)
            }
        }
    }

    @Test("a COPY whose body throws is aborted and leaves nothing behind")
    func copyAbortedByBody() async throws {
        struct Stop: Error {}
        try await TestDatabase.withSchema("copyabort") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                try await client.execute("CREATE TABLE bulk (n int8)")
                await #expect(throws: Stop.self) {
                    try await client.withConnection { connection in
                        try await connection.copyFrom("COPY bulk (n) FROM STDIN") { writer in
                            for n in 0..<10_000 { try writer.writeRow([n]) }
                            throw Stop()
                        }
                    }
                }
                let value22 = try await client.query("SELECT count(*) FROM bulk").single().decode(Int.self, at: 0)
                #expect(value22 == 0)
            }
        }
    }

    @Test("LISTEN/NOTIFY round trip")
    func listenNotify() async throws {
        try await TestDatabase.withSchema("notify") { db in
            let channel = "cloudscan_test_\(UUID().uuidString.prefix(8).lowercased())"
            let listener = PostgresListener(configuration: db.ownerConfiguration(), logger: TestDatabase.logger("test"))
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                var iterator = listener.events(channels: [channel]).makeAsyncIterator()
                #expect(await iterator.next() == .listening)
                try await client.query("SELECT pg_notify(\(channel), \("scan 1 queued"))")
                try await client.query("SELECT pg_notify(\(channel), \("scan 2 queued"))")
                var payloads: [String] = []
                while payloads.count < 2, let event = await iterator.next() {
                    if case .notification(let notification) = event {
                        #expect(notification.channel == channel)
                        payloads.append(notification.payload)
                    }
                }
                #expect(payloads == ["scan 1 queued", "scan 2 queued"])
            }
        }
    }

    @Test("cancelling the task cancels the statement on the server, and the session stays usable")
    func cancellationReachesServer() async throws {
        try await TestDatabase.withSchema("cancel") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { observer in
                try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                    let started = ContinuousClock.now
                    let task = Task { try await client.query("SELECT pg_sleep(60)") }
                    // Cancel only once the statement runs on the server (a loaded machine may take a while
                    // to connect; cancelling before the statement starts is a different, tested path).
                    var active = 0
                    while active == 0, ContinuousClock.now - started < .seconds(20) {
                        try await Task.sleep(for: .milliseconds(50))
                        active = try await observer.query(
                            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active' AND application_name = 'cloudscan-test' AND pid <> pg_backend_pid()"
                        ).single().decode(Int.self, at: 0)
                    }
                    #expect(active == 1, "the statement never started on the server")
                    task.cancel()
                    let result = await task.result
                    let elapsed = ContinuousClock.now - started
                    switch result {
                    case .success: Issue.record("a cancelled 60 s sleep returned normally")
                    case .failure(let error as PostgresError):
                        #expect(error.code == .queryCancelled)
                        #expect(error.sqlState == "57014")
                    case .failure(let error): Issue.record("unexpected error \(error)")
                    }
                    #expect(elapsed < .seconds(30), "the server kept running the statement: \(elapsed)")
                    // The one pooled session is healthy and reused.
                    let value23 = try await client.query("SELECT 7").single().decode(Int32.self, at: 0)
                    #expect(value23 == 7)
                    let running = try await client.query(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'"
                    ).single().decode(Int.self, at: 0)
                    #expect(running == 0)
                }
            }
        }
    }

    @Test("a waiter for a busy pool gives up when its task is cancelled")
    func waiterCancellation() async throws {
        try await TestDatabase.withSchema("waiter") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                let holder = Task { try await client.query("SELECT pg_sleep(1.5)") }
                try await Task.sleep(for: .milliseconds(300))
                let waiter = Task { try await client.query("SELECT 1") }
                try await Task.sleep(for: .milliseconds(200))
                waiter.cancel()
                await #expect(throws: CancellationError.self) { try await waiter.value }
                _ = try await holder.value
                let value24 = try await client.query("SELECT 2").single().decode(Int32.self, at: 0)
                #expect(value24 == 2)
            }
        }
    }

    @Test("statement_timeout from the configuration stops a long statement")
    func statementTimeout() async throws {
        try await TestDatabase.withSchema("timeout") { db in
            var configuration = db.ownerConfiguration(maximumConnections: 1)
            configuration.statementTimeout = .milliseconds(300)
            try await TestDatabase.withClient(configuration) { client in
                let error = await #expect(throws: PostgresError.self) { try await client.query("SELECT pg_sleep(5)") }
                #expect(error?.sqlState == "57014")
                let value25 = try await client.query("SHOW statement_timeout").single().decode(String.self, at: 0)
                #expect(value25 == "300ms")
            }
        }
    }

    @Test("values round-trip through parameters and results")
    func valueRoundTrip() async throws {
        try await TestDatabase.withSchema("values") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                let id = UUID()
                let when = Date(timeIntervalSince1970: 1_764_000_000.123456)
                let tags = ["plain", "with space", "quote\"d", "back\\slash", "comma,x", ""]
                let json = try PostgresJSONB(encoding: ["severity": "high", "rule": "S101"])
                let missing: String? = nil
                let row = try await client.query(
                    """
                    SELECT \(id), \(when), \(true), \(Int.max), \(tags), \(json), \(missing)::text,
                           \("ünïcödé ✓"), \(3.25), \(Int32(-7))
                    """
                ).single()
                #expect(try row.decode(UUID.self, at: 0) == id)
                let decodedDate = try row.decode(Date.self, at: 1)
                #expect(abs(decodedDate.timeIntervalSince(when)) < 0.000_001)
                #expect(try row.decode(Bool.self, at: 2) == true)
                #expect(try row.decode(Int.self, at: 3) == Int.max)
                #expect(try row.decode([String].self, at: 4) == tags)
                #expect(
                    try row.decode(PostgresJSONB.self, at: 5).decode([String: String].self) == [
                        "rule": "S101", "severity": "high",
                    ])
                #expect(try row.decode(String?.self, at: 6) == nil)
                #expect(throws: PostgresError.self) { try row.decode(String.self, at: 6) }
                #expect(try row.decode(String.self, at: 7) == "ünïcödé ✓")
                #expect(try row.decode(Double.self, at: 8) == 3.25)
                #expect(try row.decode(Int32.self, at: 9) == -7)
            }
        }
    }

    @Test("an error's description carries the SQLSTATE but never a parameter value")
    func errorsDoNotLeakParameters() async throws {
        try await TestDatabase.withSchema("errors") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                let secret = "tok-5ecr3t-\(UUID().uuidString)"
                let syntax = await #expect(throws: PostgresError.self) {
                    try await client.query("SELECT \(secret)::uuid")
                }
                #expect(syntax?.sqlState == "22P02")
                #expect(syntax.map { !"\($0)".contains(secret) } == true)
                #expect(syntax?.message.contains(secret) == true, "the raw message stays available to code")

                try await client.execute("CREATE TABLE tokens (value text PRIMARY KEY)")
                try await client.execute("INSERT INTO tokens VALUES (\(secret))")
                let duplicate = await #expect(throws: PostgresError.self) {
                    try await client.execute("INSERT INTO tokens VALUES (\(secret))")
                }
                #expect(duplicate?.isUniqueViolation == true)
                #expect(duplicate?.constraint == "tokens_pkey")
                #expect(duplicate?.serverDetail?.contains(secret) == true)
                #expect(duplicate.map { !"\($0)".contains(secret) } == true)
            }
        }
    }

    @Test("a wrong password fails to connect with a clear error, and the pool slot is freed")
    func connectFailure() async throws {
        var configuration = TestDatabase(schema: "public").ownerConfiguration(maximumConnections: 1)
        configuration.password = "not-the-password"
        try await TestDatabase.withClient(configuration) { client in
            for _ in 0..<2 {
                let error = await #expect(throws: PostgresError.self) { try await client.query("SELECT 1") }
                #expect(error?.code == .connectionFailed)
                #expect(error.map { !"\($0)".contains("not-the-password") } == true)
            }
        }
    }
}
