using Xunit.Abstractions;
using Xunit.Sdk;

namespace EraserWorker.Tests.Infrastructure;

/// <summary>
/// A <see cref="FactAttribute"/> whose test is reported as skipped (not failed) when it throws
/// <see cref="SkipTestException"/> — what <see cref="TestServices"/> does for a missing service when
/// <c>ERASER_TEST_ALLOW_MISSING_SERVICES=1</c>. Without that variable a missing service fails the test.
/// </summary>
[XunitTestCaseDiscoverer("EraserWorker.Tests.Infrastructure.ServiceFactDiscoverer", "EraserWorker.TestSupport")]
[AttributeUsage(AttributeTargets.Method)]
public sealed class ServiceFactAttribute : FactAttribute;

/// <summary>The <see cref="TheoryAttribute"/> counterpart of <see cref="ServiceFactAttribute"/>.</summary>
[XunitTestCaseDiscoverer("EraserWorker.Tests.Infrastructure.ServiceTheoryDiscoverer", "EraserWorker.TestSupport")]
[AttributeUsage(AttributeTargets.Method)]
public sealed class ServiceTheoryAttribute : TheoryAttribute;

/// <summary>Discovers <see cref="ServiceFactAttribute"/> tests.</summary>
public sealed class ServiceFactDiscoverer(IMessageSink diagnosticMessageSink) : FactDiscoverer(diagnosticMessageSink)
{
    /// <inheritdoc />
    protected override IXunitTestCase CreateTestCase(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo factAttribute) =>
        new SkippableTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod);
}

/// <summary>Discovers <see cref="ServiceTheoryAttribute"/> tests.</summary>
public sealed class ServiceTheoryDiscoverer(IMessageSink diagnosticMessageSink) : TheoryDiscoverer(diagnosticMessageSink)
{
    /// <inheritdoc />
    protected override IEnumerable<IXunitTestCase> CreateTestCasesForDataRow(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo theoryAttribute, object[] dataRow) =>
        [new SkippableTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod, dataRow)];

    /// <inheritdoc />
    protected override IEnumerable<IXunitTestCase> CreateTestCasesForTheory(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo theoryAttribute) =>
        [new SkippableTheoryTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod)];
}

/// <summary>A test case that turns a <see cref="SkipTestException"/> failure into a skip.</summary>
public class SkippableTestCase : XunitTestCase
{
    /// <summary>For deserialization.</summary>
    [Obsolete("Called by the de-serializer; should only be called by deriving classes for de-serialization purposes")]
    public SkippableTestCase()
    {
    }

    /// <summary>Creates the test case.</summary>
    public SkippableTestCase(IMessageSink sink, TestMethodDisplay display, TestMethodDisplayOptions options, ITestMethod method, object[]? arguments = null)
        : base(sink, display, options, method, arguments)
    {
    }

    /// <inheritdoc />
    public override async Task<RunSummary> RunAsync(IMessageSink diagnosticMessageSink, IMessageBus messageBus, object[] constructorArguments, ExceptionAggregator aggregator, CancellationTokenSource cancellationTokenSource)
    {
        var bus = new SkippingMessageBus(messageBus);
        var summary = await base.RunAsync(diagnosticMessageSink, bus, constructorArguments, aggregator, cancellationTokenSource);
        summary.Failed -= bus.Skipped;
        summary.Skipped += bus.Skipped;
        return summary;
    }
}

/// <summary>The theory counterpart of <see cref="SkippableTestCase"/> (data rows not pre-enumerated).</summary>
public class SkippableTheoryTestCase : XunitTheoryTestCase
{
    /// <summary>For deserialization.</summary>
    [Obsolete("Called by the de-serializer; should only be called by deriving classes for de-serialization purposes")]
    public SkippableTheoryTestCase()
    {
    }

    /// <summary>Creates the test case.</summary>
    public SkippableTheoryTestCase(IMessageSink sink, TestMethodDisplay display, TestMethodDisplayOptions options, ITestMethod method)
        : base(sink, display, options, method)
    {
    }

    /// <inheritdoc />
    public override async Task<RunSummary> RunAsync(IMessageSink diagnosticMessageSink, IMessageBus messageBus, object[] constructorArguments, ExceptionAggregator aggregator, CancellationTokenSource cancellationTokenSource)
    {
        var bus = new SkippingMessageBus(messageBus);
        var summary = await base.RunAsync(diagnosticMessageSink, bus, constructorArguments, aggregator, cancellationTokenSource);
        summary.Failed -= bus.Skipped;
        summary.Skipped += bus.Skipped;
        return summary;
    }
}

/// <summary>Rewrites "failed with <see cref="SkipTestException"/>" into "skipped".</summary>
internal sealed class SkippingMessageBus(IMessageBus inner) : IMessageBus
{
    public int Skipped { get; private set; }

    public bool QueueMessage(IMessageSinkMessage message)
    {
        if (message is ITestFailed failed && failed.ExceptionTypes.FirstOrDefault() == typeof(SkipTestException).FullName)
        {
            Skipped++;
            string reason = failed.Messages.FirstOrDefault() ?? "";
            int marker = reason.IndexOf(SkipTestException.Marker, StringComparison.Ordinal);
            return inner.QueueMessage(new TestSkipped(failed.Test, marker >= 0 ? reason[(marker + SkipTestException.Marker.Length)..] : reason));
        }
        return inner.QueueMessage(message);
    }

    public void Dispose()
    {
    }
}
