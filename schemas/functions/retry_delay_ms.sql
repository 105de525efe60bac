-- Retry n (n = 1 for the first retry) waits min(p_max, p_base * 2^(n-1) * J) milliseconds, J
-- uniform in [0.8, 1.2] (+-20% jitter): the first retry waits ~p_base, and the cap is a true cap.
CREATE OR REPLACE FUNCTION flowreg.retry_delay_ms(p_base bigint, p_max bigint, p_retry int)
RETURNS double precision LANGUAGE sql VOLATILE AS $$
  SELECT least(p_max::float8,
               p_base * power(2::float8, least(greatest(p_retry - 1, 0), 40)) * (0.8 + random() * 0.4))
$$;
