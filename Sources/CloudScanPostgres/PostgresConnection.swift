import Dispatch
import Foundation
import Synchronization

/// One PostgreSQL session, leased from a ``PostgresClient``.
///
/// Its libpq handle lives on a private serial `DispatchQueue`: blocking libpq calls never run on
/// Swift's cooperative pool. Cancelling the calling task sends a cancel request to the server.
public final class PostgresConnection: Sendable {
    /// A number unique within the process, for logs and tests.
    public let id: Int
    private let queue: DispatchQueue
    // Only touched on `queue`, which serializes every access; hence the unchecked box.
    private let raw: UncheckedBox<LibPQConnection>
    private let cancelToken: PostgresCancelToken

    private static let nextID = Atomic<Int>(1)

    private init(id: Int, queue: DispatchQueue, raw: LibPQConnection) {
        self.id = id
        self.queue = queue
        self.raw = UncheckedBox(raw)
        self.cancelToken = raw.cancelToken
    }

    /// Opens a session (the blocking connect runs on the session's own queue).
    static func connect(_ configuration: PostgresConfiguration) async throws -> PostgresConnection {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        let queue = DispatchQueue(label: "cloudscan.postgres.connection.\(id)")
        return try await withCheckedThrowingContinuation { continuation in
            queue.async {
                continuation.resume(
                    with: Result {
                        PostgresConnection(id: id, queue: queue, raw: try LibPQConnection.connect(configuration))
                    })
            }
        }
    }

    // MARK: Public API

    /// Runs one statement and returns its rows.
    @discardableResult
    public func query(_ query: PostgresQuery) async throws -> PostgresRows {
        try await run { try $0.execute(query) }
    }

    /// Runs one statement and returns the number of rows it affected.
    @discardableResult
    public func execute(_ query: PostgresQuery) async throws -> Int {
        try await run { try $0.execute(query) }.affectedRows
    }

    /// Runs a script of statements with no parameters (simple query protocol). Trusted SQL only.
    @discardableResult
    public func executeScript(_ sql: String) async throws -> PostgresRows {
        try await run { try $0.executeScript(sql) }
    }

    /// `COPY … FROM STDIN`: `body` runs on the session's queue and writes rows; returns rows copied.
    @discardableResult
    public func copyFrom(
        _ statement: String, _ body: @escaping @Sendable (inout PostgresCopyWriter) throws -> Void
    ) async throws -> Int {
        try await run { try $0.copyFrom(statement, body: body) }
    }

    /// The server process id serving this session.
    public func backendPID() async throws -> Int32 {
        try await run { $0.backendPID }
    }

    // MARK: Pool support

    /// Whether the session survived its idle time (reads pending input without blocking).
    func checkAlive() async -> Bool {
        (try? await run(ignoringCancellation: true) { $0.checkAlive() }) ?? false
    }

    /// Makes the session reusable after a lease: rolls back a transaction left open.
    /// Returns false when the session should be discarded.
    func resetForReuse() async -> Bool {
        let result = try? await run(ignoringCancellation: true) { raw -> Bool in
            guard raw.isOpen else { return false }
            if raw.isIdleOutsideTransaction { return true }
            _ = try? raw.executeScript("ROLLBACK")
            return raw.isOpen && raw.isIdleOutsideTransaction
        }
        return result ?? false
    }

    /// Closes the handle on its queue.
    func close() async {
        _ = try? await run(ignoringCancellation: true) { $0.close() }
    }

    // MARK: Execution

    private enum RunState { case queued, running, finished, cancelled }

    /// Runs `work` on the session's queue. If the task is cancelled before the work starts it does
    /// not start; if it is cancelled while running, the server is asked to cancel the statement.
    func run<R: Sendable>(
        ignoringCancellation: Bool = false, _ work: @escaping @Sendable (LibPQConnection) throws -> R
    ) async throws -> R {
        if !ignoringCancellation { try Task.checkCancellation() }
        let state = Mutex(RunState.queued)
        let raw = self.raw
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<R, Error>) in
                queue.async {
                    let proceed = state.withLock { state -> Bool in
                        if state == .cancelled, !ignoringCancellation { return false }
                        state = .running
                        return true
                    }
                    guard proceed else {
                        continuation.resume(throwing: CancellationError())
                        return
                    }
                    let result = Result { try work(raw.value) }
                    state.withLock { $0 = .finished }
                    continuation.resume(with: result)
                }
            }
        } onCancel: {
            guard !ignoringCancellation else { return }
            let wasRunning = state.withLock { state -> Bool in
                defer { if state == .queued { state = .cancelled } }
                return state == .running
            }
            if wasRunning { cancelToken.send() }
        }
    }
}

/// Holds a non-Sendable value that is only ever used on one serial queue.
final class UncheckedBox<Value>: @unchecked Sendable {
    // Callers guarantee confinement to a single serial queue or thread.
    let value: Value
    init(_ value: Value) { self.value = value }
}
