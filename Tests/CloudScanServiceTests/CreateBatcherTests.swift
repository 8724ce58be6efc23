import CloudScanCore
import CloudScanPostgres
import Testing

@testable import CloudScanService

/// When a failed group may be retried request by request without writing a scan twice.
@Suite("CreateBatcher retry decision")
struct CreateBatcherTests {
    @Test("only a group that certainly rolled back is retried alone; a lost session (maybe after COMMIT) is not")
    func retryDecision() {
        #expect(CreateBatcher.certainlyRolledBack(PostgresError(code: .server, sqlState: "23505", message: "dup")))
        #expect(CreateBatcher.certainlyRolledBack(PostgresError(code: .commitFailed, message: "ROLLBACK")))
        #expect(CreateBatcher.certainlyRolledBack(ScanServiceError(code: .conflict, message: "missing row")))
        #expect(!CreateBatcher.certainlyRolledBack(PostgresError(code: .connectionClosed, message: "lost")))
        #expect(!CreateBatcher.certainlyRolledBack(PostgresError(code: .connectionFailed, message: "refused")))
        #expect(!CreateBatcher.certainlyRolledBack(PostgresError(code: .queryCancelled, message: "cancelled")))
        #expect(!CreateBatcher.certainlyRolledBack(CancellationError()))
    }
}
