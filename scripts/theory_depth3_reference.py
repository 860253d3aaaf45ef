"""Reference values for the depth-3 hand test in src/theory/elasticity.rs.

Independent of the Rust code: the rates are written straight from the definitions
(cross-entropy of each data set under the size-weighted mixture, divided by d = 3) and
differentiated numerically with mpmath at 40 digits; no closed-form derivative is used.
Run: /work/venv/bin/python scripts/theory_depth3_reference.py
"""
import mpmath as mp

mp.mp.dps = 40
D1 = [mp.mpf(x) / 36 for x in [8, 7, 6, 5, 4, 3, 2, 1]]
D2 = [mp.mpf(x) / 36 for x in [1, 2, 3, 4, 5, 6, 7, 8]]
D3 = [mp.mpf(x) / 36 for x in [5, 1, 8, 2, 7, 3, 6, 4]]
PP = [(a + b + c) / 3 for a, b, c in zip(D1, D2, D3)]  # pre-training: equal mixture
PA, PT = D2, D3  # alignment ~ D2, perturbation ~ D3
d = 3


def q(k, l):
    n = k + 1 + l
    return [(k * p + a + l * t) / n for p, a, t in zip(PP, PA, PT)]


def gamma(data, k, l):
    return -sum(p * mp.log(x, 2) for p, x in zip(data, q(k, l))) / d


def slope(data, k, l):
    return mp.diff(lambda s: gamma(data, k, s), l)


L_MAX = mp.mpf("0.1")
ks = [10, 100, 1000]
logk, logr = [], []
for k in ks:
    ga, gp = slope(PA, k, 0), slope(PP, k, 0)
    sec = (gamma(PA, k, L_MAX) - gamma(PA, k, 0)) / -(gamma(PP, k, L_MAX) - gamma(PP, k, 0))
    print(f"k={k}: dgamma_a/dl(0)={mp.nstr(ga, 17)} dgamma_p/dl(0)={mp.nstr(gp, 17)} "
          f"secant ratio={mp.nstr(sec, 17)}")
    logk.append(mp.log(k))
    logr.append(mp.log(sec))
mx, my = sum(logk) / 3, sum(logr) / 3
b = sum((x - mx) * (y - my) for x, y in zip(logk, logr)) / sum((x - mx) ** 2 for x in logk)
print("slope of ln(secant ratio) vs ln k:", mp.nstr(b, 17))
lstar = mp.findroot(lambda s: slope(PP, 100, s), 0.5)
print("l* (k=100):", mp.nstr(lstar, 17))
