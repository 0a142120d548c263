using System.Reflection;
using EraserWorker.Core.Compute;
using EraserWorker.Tests.Shared;

namespace EraserWorker.Models.Tests;

/// <summary>
/// Static guard against the TorchSharp Scalar finalizer race (see <see cref="ScalarArgs"/>): the model runtime and the
/// assemblies above it create no temporary Scalar (implicit conversions, <c>t * 0.5</c>, <c>a + b</c> and
/// <c>add_</c> with their hidden alpha = 1, <c>square()</c>, <c>arange(n)</c>, …); every such call goes through
/// <see cref="ScalarArgs"/>. The scanner is shared with EraserWorker.Core.Tests (a linked file).
/// </summary>
public sealed class ScalarLifetimeTests
{
    [Theory]
    [InlineData("EraserWorker.Models")]
    [InlineData("EraserWorker.Evaluation")]
    [InlineData("eraser")] // EraserWorker.Cli
    public void Assembly_creates_no_temporary_scalars_outside_ScalarArgs(string assemblyName)
    {
        var assembly = Assembly.Load(assemblyName);
        var offenders = ScalarScanner.Offenders(assembly, typeof(ScalarArgs));
        Assert.True(offenders.Count == 0, $"Temporary Scalars in {assemblyName} (use ScalarArgs):\n" + string.Join('\n', offenders));
    }
}
