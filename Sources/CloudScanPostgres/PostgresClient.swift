import Foundation
import Logging
import Synchronization

/// A bounded pool of PostgreSQL sessions for async code.
///
/// ```swift
/// let client = PostgresClient(configuration: .init(environment: env), logger: logger)
/// try await client.withTransaction(organizationID: org) { connection in
///     try await connection.execute("UPDATE scans SET status = 'running' WHERE id = \(id)")
/// }
/// ```
public final class PostgresClient: Sendable {
    /// The configuration the pool opens sessions with.
    public let configuration: PostgresConfiguration
    let logger: Logger

    private enum Ticket: Sendable {
        case connection(PostgresConnection)
        case open
    }

    private struct State: ~Copyable {
        var machine: ConnectionPoolStateMachine<PostgresConnection, Int>
        var continuations: [Int: CheckedContinuation<Ticket, Error>] = [:]
        var nextWaiter = 0
    }

    private let state: Mutex<State>

    /// Creates a pool; connections open lazily, up to `configuration.maximumConnections`.
    public init(configuration: PostgresConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.state = Mutex(
            State(machine: ConnectionPoolStateMachine(maximumConnections: configuration.maximumConnections)))
    }

    // MARK: Leasing

    /// Leases a session for the duration of `body`. A transaction left open is rolled back.
    public func withConnection<R>(_ body: (PostgresConnection) async throws -> R) async throws -> R {
        let connection = try await lease()
        do {
            let result = try await body(connection)
            await release(connection)
            return result
        } catch {
            await release(connection)
            throw error
        }
    }

    /// Runs `body` in a transaction: COMMIT when it returns (verified to have committed), ROLLBACK
    /// when it throws. With an `organizationID`, the transaction-local setting
    /// `cloudscan.organization_id` is set first, which the row-level security policies key on.
    public func withTransaction<R>(
        organizationID: UUID? = nil, isolation: PostgresIsolationLevel = .readCommitted,
        _ body: (PostgresConnection) async throws -> R
    ) async throws -> R {
        try await withConnection { connection in
            try await connection.withTransaction(organizationID: organizationID, isolation: isolation, body)
        }
    }

    /// Runs one statement on a pooled session.
    @discardableResult
    public func query(_ query: PostgresQuery) async throws -> PostgresRows {
        try await withConnection { try await $0.query(query) }
    }

    /// Runs one statement on a pooled session and returns the rows it affected.
    @discardableResult
    public func execute(_ query: PostgresQuery) async throws -> Int {
        try await withConnection { try await $0.execute(query) }
    }

    /// Closes idle sessions and refuses new leases; leased sessions close when released.
    public func shutdown() async {
        let (close, fail) = state.withLock { state in
            let actions = state.machine.shutDown()
            let continuations = actions.fail.compactMap { state.continuations.removeValue(forKey: $0) }
            return (actions.close, continuations)
        }
        for continuation in fail { continuation.resume(throwing: Self.closedError) }
        for connection in close { await connection.close() }
    }

    private static let closedError = PostgresError(code: .clientClosed, message: "the PostgreSQL client is shut down")

    func lease() async throws -> PostgresConnection {
        while true {
            switch try await ticket() {
            case .connection(let connection):
                if await connection.checkAlive() { return connection }
                logger.debug(
                    "discarding a broken idle PostgreSQL session", metadata: ["connection": "\(connection.id)"])
                await connection.close()
                freeSlot()
            case .open:
                do {
                    let connection = try await PostgresConnection.connect(configuration)
                    logger.debug("opened a PostgreSQL session", metadata: ["connection": "\(connection.id)"])
                    return connection
                } catch {
                    freeSlot()
                    throw error
                }
            }
        }
    }

    private func ticket() async throws -> Ticket {
        try Task.checkCancellation()
        let waiter = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Ticket, Error>) in
                let immediate: Result<Ticket, Error>? = state.withLock { state in
                    switch state.machine.lease(waiter) {
                    case .use(let connection): return .success(.connection(connection))
                    case .open: return .success(.open)
                    case .fail: return .failure(Self.closedError)
                    case .wait:
                        state.continuations[waiter] = continuation
                        return nil
                    }
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<Ticket, Error>? in
                guard state.machine.cancelWaiter(waiter) else { return nil }
                return state.continuations.removeValue(forKey: waiter)
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    func release(_ connection: PostgresConnection) async {
        guard await connection.resetForReuse() else {
            await connection.close()
            freeSlot()
            return
        }
        let action = state.withLock {
            state -> (
                ConnectionPoolStateMachine<PostgresConnection, Int>.ReleaseAction, CheckedContinuation<Ticket, Error>?
            ) in
            let action = state.machine.release(connection)
            if case .handOver(_, let waiter) = action {
                return (action, state.continuations.removeValue(forKey: waiter))
            }
            return (action, nil)
        }
        switch action.0 {
        case .handOver(let connection, _): action.1?.resume(returning: .connection(connection))
        case .park: break
        case .close(let connection): await connection.close()
        }
    }

    private func freeSlot() {
        let continuation = state.withLock { state -> CheckedContinuation<Ticket, Error>? in
            switch state.machine.slotFreed() {
            case .openFor(let waiter): return state.continuations.removeValue(forKey: waiter)
            case .none: return nil
            }
        }
        continuation?.resume(returning: .open)
    }
}

/// Transaction isolation levels.
public enum PostgresIsolationLevel: String, Sendable {
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"
}

extension PostgresConnection {
    /// Runs `body` in a transaction on this session; see ``PostgresClient/withTransaction(organizationID:isolation:_:)``.
    public func withTransaction<R>(
        organizationID: UUID? = nil, isolation: PostgresIsolationLevel = .readCommitted,
        _ body: (PostgresConnection) async throws -> R
    ) async throws -> R {
        try await executeScript("BEGIN ISOLATION LEVEL \(isolation.rawValue)")
        do {
            if let organizationID {
                try await query("SELECT set_config('cloudscan.organization_id', \(organizationID.postgresText), true)")
            }
            let result = try await body(self)
            let commit = try await run(ignoringCancellation: true) { try $0.executeScript("COMMIT") }
            guard commit.commandTag == "COMMIT" else {
                throw PostgresError(
                    code: .commitFailed,
                    message: "COMMIT answered \(commit.commandTag): the transaction was rolled back")
            }
            return result
        } catch {
            _ = try? await run(ignoringCancellation: true) { raw in
                if !raw.isIdleOutsideTransaction { _ = try raw.executeScript("ROLLBACK") }
            }
            throw error
        }
    }
}
