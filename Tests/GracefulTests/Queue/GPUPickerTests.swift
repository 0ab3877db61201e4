import Testing

@testable import Graceful

@Suite struct GPUPickerTests {
    @Test func mostFreeMemoryFirstThenLeastUtilisation() {
        let output = "0, 1000, 50\n1, 8000, 90\n2, 8000, 10\nbad line\n"
        #expect(GPUPicker.rank(output) == ["2", "1", "0"])
    }

    @Test func aListIsDealtRoundRobin() {
        #expect(GPUPicker.assign(.list(["3", "5"]), workers: 3, notice: { _ in }) == ["3", "5", "3"])
    }
}
