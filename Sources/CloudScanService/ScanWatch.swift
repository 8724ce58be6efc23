import CloudScanCore
import CloudScanPostgres
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// One change of a scan's state, as WatchScan streams it.
public struct ScanChange: Sendable, Hashable {
    /// The `scan_events` row id (0 for the first message, the scan as it was found).
    public var sequence: Int64
    /// nil for the first message.
    public var fromStatus: ScanStatus?
    public var toStatus: ScanStatus
    public var reason: String?
    public var at: Date
    /// The scan as read after the change.
    public var scan: Scan
}

/// Wakes WatchScan streams when their scan gets a new `scan_events` row.
///
/// One LISTEN session per process (not one per watcher): the trigger of migration 0003 sends
/// the scan id on `cloudscan_scan_events`. After a listener reconnect, and every `sweepInterval`,
/// every watcher is woken and re-reads, so a lost notification delays a change but never loses it.
public final class ScanWatchHub: Service, Sendable {
    public static let channel = "cloudscan_scan_events"

    private struct Subscribers: ~Copyable {
        var next = 0
        var byScan: [UUID: [Int: AsyncStream<Void>.Continuation]] = [:]
    }

    private let listener: PostgresListener
    private let sweepInterval: Duration
    private let logger: Logger
    private let subscribers = Mutex(Subscribers())

    public init(listener: PostgresListener, sweepInterval: Duration = .seconds(5), logger: Logger) {
        self.listener = listener
        self.sweepInterval = sweepInterval
        self.logger = logger
    }

    /// Listens until the service group shuts down (or the task is cancelled).
    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await event in self.listener.events(channels: [Self.channel]).cancelOnGracefulShutdown() {
                    switch event {
                    case .notification(let notification):
                        if let id = UUID(uuidString: notification.payload) { self.wake(id) }
                    case .listening, .reconnected:
                        self.wakeAll()
                    }
                }
            }
            group.addTask {
                while (try? await Task.sleep(for: self.sweepInterval)) != nil, !Task.isShuttingDownGracefully {
                    self.wakeAll()
                }
            }
            await group.next()
            group.cancelAll()
        }
        wakeAll(finishing: true)
    }

    /// A stream that yields whenever `scanID` may have changed; coalesces wake-ups.
    func subscribe(_ scanID: UUID) -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let token = subscribers.withLock { state in
            state.next += 1
            state.byScan[scanID, default: [:]][state.next] = continuation
            return state.next
        }
        continuation.onTermination = { [weak self] _ in
            self?.subscribers.withLock { state in
                state.byScan[scanID]?[token] = nil
                if state.byScan[scanID]?.isEmpty == true { state.byScan[scanID] = nil }
            }
        }
        return stream
    }

    /// How many streams are watching (for metrics and tests).
    public var watcherCount: Int { subscribers.withLock { $0.byScan.values.reduce(0) { $0 + $1.count } } }

    private func wake(_ scanID: UUID) {
        let targets = subscribers.withLock { Array(($0.byScan[scanID] ?? [:]).values) }
        for continuation in targets { continuation.yield() }
    }

    private func wakeAll(finishing: Bool = false) {
        let targets = subscribers.withLock { $0.byScan.values.flatMap(\.values) }
        for continuation in targets {
            if finishing { continuation.finish() } else { continuation.yield() }
        }
    }
}

extension ScanService {
    /// The scan as it is now, then each later state change once, in order; the stream ends after
    /// the change into a final state (at once if the scan is already final). Another
    /// organization's scan is not found (thrown before the stream starts).
    public func watchScan(organizationID: UUID, id: UUID, hub: ScanWatchHub) async throws
        -> AsyncThrowingStream<ScanChange, any Error>
    {
        // Subscribe before the first read, so no change falls between the read and the wake-up.
        let wakeups = hub.subscribe(id)
        // One snapshot for both reads: at READ COMMITTED a change committed between them would be
        // counted in `last` while the scan still showed the state before it (and never be sent).
        let (scan, last) = try await client.withTransaction(organizationID: organizationID, isolation: .repeatableRead)
        {
            c in
            guard let scan = try await Self.fetch(c, id: id) else {
                throw ScanServiceError(code: .notFound, message: "no scan \(id)")
            }
            let last = try await c.query(
                "SELECT coalesce(max(id), 0) FROM scan_events WHERE scan_id = \(id) AND scan_created_at = \(scan.createdAt)"
            ).single().decode(Int64.self, at: 0)
            return (scan, last)
        }
        let (stream, continuation) = AsyncThrowingStream<ScanChange, any Error>.makeStream()
        continuation.yield(
            ScanChange(
                sequence: last, fromStatus: nil, toStatus: scan.status, reason: nil, at: scan.updatedAt, scan: scan))
        if scan.status.isFinal {
            continuation.finish()
            return stream
        }
        let task = Task { [self] in
            var last = last
            do {
                for await _ in wakeups {
                    let (changes, final) = try await changes(
                        organizationID: organizationID, id: id, createdAt: scan.createdAt, after: last)
                    for change in changes {
                        continuation.yield(change)
                        last = change.sequence
                    }
                    if final {
                        continuation.finish()
                        return
                    }
                }
                // The hub stopped: the process is shutting down before the scan finished.
                throw ScanServiceError(code: .unavailable, message: "the server is shutting down; watch again")
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// The scan's events after `after`, and whether the last of them is final.
    private func changes(organizationID: UUID, id: UUID, createdAt: Date, after: Int64) async throws
        -> ([ScanChange], Bool)
    {
        try await client.withTransaction(organizationID: organizationID) { c in
            let rows = try await c.query(
                """
                SELECT id, from_status, to_status, reason, created_at FROM scan_events
                WHERE scan_id = \(id) AND scan_created_at = \(createdAt) AND id > \(after)
                ORDER BY id
                """)
            if rows.isEmpty { return ([], false) }
            // The scan may have vanished (retention); then the stream ends with what it has.
            guard let scan = try await Self.fetch(c, id: id) else {
                throw ScanServiceError(code: .notFound, message: "scan \(id) no longer exists")
            }
            var changes: [ScanChange] = []
            var final = false
            for row in rows {
                let to = ScanStatus(rawValue: try row.decode(String.self, at: 2)) ?? .failed
                changes.append(
                    ScanChange(
                        sequence: try row.decode(Int64.self, at: 0),
                        fromStatus: try row.decode(String?.self, at: 1).flatMap(ScanStatus.init(rawValue:)),
                        toStatus: to, reason: try row.decode(String?.self, at: 3), at: try row.decode(Date.self, at: 4),
                        scan: scan))
                final = to.isFinal
            }
            return (changes, final)
        }
    }
}
