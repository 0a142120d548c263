using System.Reflection;
using System.Reflection.Emit;
using TorchSharp;

namespace EraserWorker.Tests.Shared;

/// <summary>
/// Static guard for the TorchSharp Scalar finalizer race (see EraserWorker.Core.Compute.ScalarArgs): lists the methods
/// of an assembly that call a TorchSharp method which creates a <see cref="Scalar"/> on the way (an implicit conversion,
/// an operator with a number, add/add_ with their hidden alpha = 1, square(), arange, …), found by walking the IL of
/// both assemblies. Compiled into several test projects as a linked file.
/// </summary>
internal static class ScalarScanner
{
    private static readonly Lazy<HashSet<(Module, int)>> Creators = new(() => ScalarCreators(typeof(Scalar).Assembly));

    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>"Type.Method calls Callee.Name" for every call in <paramref name="assembly"/>, outside the types
    /// <paramref name="allowed"/> (and their nested types), of a TorchSharp method that creates a Scalar.</summary>
    public static SortedSet<string> Offenders(Assembly assembly, params Type[] allowed)
    {
        var creators = Creators.Value;
        var offenders = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var type in Types(assembly))
        {
            if (allowed.Any(a => IsWithin(type, a)))
                continue;
            foreach (var method in Methods(type))
                foreach (var callee in Callees(method))
                    if (creators.Contains(Key(callee)))
                        offenders.Add($"{type.FullName}.{method.Name} calls {callee.DeclaringType?.Name}.{callee.Name}");
        }
        return offenders;
    }

    /// <summary>Whether the TorchSharp method <paramref name="method"/> creates a Scalar, directly or indirectly.</summary>
    public static bool CreatesScalar(MethodBase method) => Creators.Value.Contains(Key(method));

    private static (Module, int) Key(MethodBase method) => (method.Module, method.MetadataToken);

    /// <summary>TorchSharp methods that construct a Scalar, directly or through other TorchSharp methods.</summary>
    private static HashSet<(Module, int)> ScalarCreators(Assembly torchSharp)
    {
        var callers = new Dictionary<(Module, int), List<(Module, int)>>();
        var created = new HashSet<(Module, int)>();
        foreach (var type in Types(torchSharp))
            foreach (var method in Methods(type))
                foreach (var callee in Callees(method))
                {
                    if (callee is ConstructorInfo && callee.DeclaringType == typeof(Scalar))
                        created.Add(Key(method));
                    if (!callers.TryGetValue(Key(callee), out var list))
                        callers[Key(callee)] = list = [];
                    list.Add(Key(method));
                }
        var queue = new Queue<(Module, int)>(created);
        while (queue.TryDequeue(out var next))
            foreach (var caller in callers.GetValueOrDefault(next) ?? [])
                if (created.Add(caller))
                    queue.Enqueue(caller);
        if (created.Count == 0)
            throw new InvalidOperationException("Found no TorchSharp method that creates a Scalar; the IL walk is broken.");
        return created;
    }

    private static IEnumerable<Type> Types(Assembly assembly)
    {
        try
        {
            return assembly.GetTypes();
        }
        catch (ReflectionTypeLoadException e)
        {
            return e.Types.OfType<Type>();
        }
    }

    private static bool IsWithin(Type? type, Type outer)
    {
        for (; type is not null; type = type.DeclaringType)
            if (type == outer)
                return true;
        return false;
    }

    private static IEnumerable<MethodBase> Methods(Type type)
    {
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static |
                                 BindingFlags.DeclaredOnly;
        return type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all));
    }

    /// <summary>Methods called (call, callvirt, newobj) or turned into delegates (ldftn) by <paramref name="method"/>.</summary>
    private static IEnumerable<MethodBase> Callees(MethodBase method)
    {
        byte[]? il;
        try
        {
            il = method.GetMethodBody()?.GetILAsByteArray();
        }
        catch (Exception e) when (e is FileNotFoundException or TypeLoadException or BadImageFormatException)
        {
            yield break;
        }
        if (il is null)
            yield break;
        var typeArguments = method.DeclaringType is { IsGenericType: true } t ? t.GetGenericArguments() : null;
        var methodArguments = method.IsGenericMethod ? method.GetGenericArguments() : null;
        for (int i = 0; i < il.Length;)
        {
            short value = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
            i += il[i] == 0xFE ? 2 : 1;
            if (!OpCodesByValue.TryGetValue(value, out var op))
                yield break;
            int operand = op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                _ => 4,
            };
            if (op == OpCodes.Call || op == OpCodes.Callvirt || op == OpCodes.Newobj || op == OpCodes.Ldftn || op == OpCodes.Ldvirtftn)
            {
                MethodBase? callee = null;
                try
                {
                    callee = method.Module.ResolveMethod(BitConverter.ToInt32(il, i), typeArguments, methodArguments);
                }
                catch (Exception e) when (e is ArgumentException or FileNotFoundException or TypeLoadException or BadImageFormatException)
                {
                }
                if (callee is not null)
                    yield return callee;
            }
            i += operand;
        }
    }
}
